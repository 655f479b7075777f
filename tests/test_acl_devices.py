"""NPUs as devices of the node: keyed by a stable id (the physical NPU, shown "NPU-..."),
ASCEND_RT_VISIBLE_DEVICES honoured, `flexai run --gpu-memory` limiting an ACL program, `flexai
ps` showing NPUs and `flexai resize --device NPU-...` changing a running ACL process's quota.
Verified on the stand-in runtime only (docs/ascend.md)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.register_assert_rewrite("acl_support")
pytest_plugins = ["acl_support"]  # the fixture acl_client

from acl_support import OOM, acl_env  # noqa: E402
from test_memory import _read_until  # noqa: E402

from conftest import Run  # noqa: E402

GiB = 1 << 30
MiB = 1 << 20


def npu_id(physical: int) -> str:
    """The id flexai gives physical NPU n (backend_acl.c): tag NPU\\0, laid out as a UUID."""
    return f"NPU-4e505500-0000-4000-8000-{physical:012x}"


def flexai_cmd(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flexai", *args], env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def cli_env(state_dir) -> dict[str, str]:
    """The simulated node's libraries on the path, no flexai settings, no preload: `flexai run`
    adds them."""
    env = acl_env(state_dir, FLEXAI_SIM_DEVICES="2")
    for key in [k for k in env if k.startswith("FLEXAI_") and not k.startswith("FLEXAI_SIM_")
                and k not in ("FLEXAI_STATE_DIR", "FLEXAI_LIB_DIR")]:
        del env[key]
    env.pop("LD_PRELOAD", None)
    return env


def test_flexai_run_gpu_memory_limits_an_npu_program(acl_client, cli_env):
    res = flexai_cmd(["run", "--gpu-memory", "1GiB", "--slice", "npu-job", "--",
                      str(acl_client), "init", "dev", "1", "info", "alloc", "1536MiB", "alloc",
                      "256MiB", "info"], cli_env)
    assert res.returncode == 0, res.stderr
    r = Run(res)
    assert r.op("info", 0)["total"] == GiB, "--gpu-memory applies to whichever accelerator"
    assert r.op("info", 0)["free"] == 512 * MiB, "the device's context: 512 MiB by default"
    assert r.rcs("alloc") == [OOM, 0]
    assert r.op("info", 1)["free"] == 256 * MiB - 32


def test_ps_shows_npus_and_resize_finds_them(acl_client, cli_env):
    env = dict(cli_env, ASCEND_RT_VISIBLE_DEVICES="1")
    holder = subprocess.Popen(
        [sys.executable, "-m", "flexai", "run", "--gpu-memory", "1GiB", "--slice", "npu-ps",
         "--", str(acl_client), "init", "dev", "0", "align32", "256MiB", "wait", "info"],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        _read_until(holder, '"op":"wait"')
        ps = flexai_cmd(["ps", "--json"], cli_env)
        assert ps.returncode == 0, ps.stderr
        snap = json.loads(ps.stdout)
        assert [d["uuid"] for d in snap["devices"]] == [npu_id(1)], "the physical NPU, by id"
        table = flexai_cmd(["ps"], cli_env)
        assert npu_id(1) in table.stdout and "npu-ps" in table.stdout, table.stdout
        resized = flexai_cmd(["resize", "npu-ps", "--gpu-memory", "2GiB", "--device", npu_id(1)],
                             cli_env)
        assert resized.returncode == 0, resized.stderr
        out, err = holder.communicate("go\n", timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    info = [json.loads(x) for x in out.splitlines() if '"op":"info"' in x][0]
    # 256 MiB allocated and the device's context (512 MiB by default)
    assert info["total"] == 2 * GiB and info["free"] == 2 * GiB - 768 * MiB, info


def test_quota_indices_follow_ascend_rt_visible_devices(acl_client, state_dir):
    # ordinal 0 is physical NPU 1 here: "0:1GiB" limits NPU 1, "1:2GiB" NPU 0
    env = acl_env(state_dir, FLEXAI_SIM_DEVICES="2", ASCEND_RT_VISIBLE_DEVICES="1,0",
                  FLEXAI_GPU_MEMORY="0:1GiB,1:2GiB", FLEXAI_SLICE="order")
    r = Run(subprocess.run([str(acl_client), "init", "count", "dev", "0", "info", "dev", "1",
                            "info"], env=env, capture_output=True, text=True, timeout=30))
    assert r.op("count")["count"] == 2
    assert [r.op("info", k)["total"] for k in (0, 1)] == [GiB, 2 * GiB]
    ps = subprocess.run([sys.executable, "-m", "flexai", "ps", "--json"],
                        env={**os.environ, "FLEXAI_STATE_DIR": str(state_dir)},
                        capture_output=True, text=True, timeout=30)
    # the node met ordinal 0 (physical NPU 1) first
    assert [d["uuid"] for d in json.loads(ps.stdout)["devices"]] == [npu_id(1), npu_id(0)]


def test_a_repeated_visible_device_ends_the_list(acl_client, state_dir):
    env = acl_env(state_dir, FLEXAI_SIM_DEVICES="2", ASCEND_RT_VISIBLE_DEVICES="1,1,0")
    r = Run(subprocess.run([str(acl_client), "init", "count", "dev", "1"], env=env,
                           capture_output=True, text=True, timeout=30))
    assert r.op("count")["count"] == 1
    assert r.op("dev")["rc"] != 0
