"""The `flexai` command: run, ps and demo, each in a subprocess with a private state dir."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flexai

GiB = 1 << 30
UUID_A = "GPU-5ca1ab1e-0000-4000-8000-000000000000"
UUID_B = "GPU-5ca1ab1e-0000-4000-8000-000000000001"


@pytest.fixture(scope="module", autouse=True)
def _library_present() -> None:
    assert flexai.library_path().is_file(), (
        f"{flexai.library_path()} is missing: build and install flexai, or set FLEXAI_LIB_DIR")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The caller's environment without flexai settings, with this package and a state dir."""
    out = {k: v for k, v in os.environ.items()
           if not k.startswith("FLEXAI_") or k == "FLEXAI_LIB_DIR"}
    out.pop("LD_PRELOAD", None)
    pkg_parent = str(Path(flexai.__file__).resolve().parent.parent)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, out.get("PYTHONPATH")) if p)
    out["FLEXAI_STATE_DIR"] = str(tmp_path / "state")
    return out


def flexai_cmd(args: list[str], env: dict[str, str],
               timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flexai", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


# ---- flexai run ---------------------------------------------------------------------------------

SHOW = 'echo "$FLEXAI_SLICE|$FLEXAI_GPU_MEMORY|$FLEXAI_PRIORITY|$LD_PRELOAD"; exit 3'


def test_run_passes_environment_and_exit_status(env: dict[str, str]) -> None:
    env["LD_PRELOAD"] = ""
    res = flexai_cmd(["run", "--gpu-memory", "8GiB", "--", "sh", "-c", SHOW], env)
    assert res.returncode == 3, res.stderr
    slice_name, memory, priority, preload = res.stdout.strip().split("|")
    assert slice_name.startswith("run-") and slice_name[4:].isdigit()
    assert memory == "8GiB" and priority == ""
    assert preload.split(":")[0] == str(flexai.library_path())


def test_run_named_slice_and_existing_preload(env: dict[str, str]) -> None:
    other = str(flexai.library_path())  # already preloaded: must not appear twice
    env["LD_PRELOAD"] = other
    res = flexai_cmd(["run", "--gpu-memory", "1GiB", "--slice", "job-7", "--priority", "high",
                      "--", "sh", "-c", SHOW], env)
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip() == f"job-7|1GiB|high|{flexai.library_path()}"


def test_run_bad_value_does_not_start_the_command(env: dict[str, str], tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    res = flexai_cmd(["run", "--gpu-memory", "8XB", "--", "touch", str(marker)], env)
    assert res.returncode == 2
    assert res.stdout == "" and not marker.exists()
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("flexai: FLEXAI_GPU_MEMORY:")
    assert "e.g." in lines[0]


@pytest.mark.parametrize("args", [["run", "--gpu-memory", "1GiB"],
                                  ["run", "--gpu-memory", "1GiB", "--"]])
def test_run_missing_command(env: dict[str, str], args: list[str]) -> None:
    res = flexai_cmd(args, env)
    assert res.returncode == 2
    assert "missing the command" in res.stderr and res.stdout == ""


def test_run_command_not_found(env: dict[str, str]) -> None:
    res = flexai_cmd(["run", "--gpu-memory", "1GiB", "--", "flexai-no-such-command"], env)
    assert res.returncode == 127
    assert res.stderr.splitlines() == ["flexai: flexai-no-such-command: command not found"]


# ---- flexai ps ----------------------------------------------------------------------------------

def test_ps_empty_node(env: dict[str, str]) -> None:
    res = flexai_cmd(["ps"], env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"no slices in {env['FLEXAI_STATE_DIR']}"
    data = json.loads(flexai_cmd(["ps", "--json"], env).stdout)
    assert data["slices"] == [] and data["state_dir"] == env["FLEXAI_STATE_DIR"]


def test_ps_populated_node(env: dict[str, str]) -> None:
    with flexai.Node(env["FLEXAI_STATE_DIR"]) as node:
        node.set_memory_limit("job-1", UUID_A, 8 * GiB)
        node.set_memory_limit("job-2", UUID_B, 3 * GiB // 2)
        assert {d.uuid for d in node.devices()} == {UUID_A, UUID_B}
    res = flexai_cmd(["ps"], env)
    assert res.returncode == 0, res.stderr
    job1 = next(line for line in res.stdout.splitlines() if line.startswith("job-1 "))
    assert UUID_A in job1 and "8 GiB" in job1
    assert "1.5 GiB" in res.stdout
    data = json.loads(flexai_cmd(["ps", "--json"], env).stdout)
    limits = {s["name"]: [(d["device"], d["limit_bytes"]) for d in s["devices"]]
              for s in data["slices"]}
    assert limits == {"job-1": [(UUID_A, 8 * GiB)], "job-2": [(UUID_B, 3 * GiB // 2)]}


def test_ps_unusable_state_dir(env: dict[str, str], tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    # an unusable directory is a failure (1); a relative path is a bad value (2), as everywhere
    for state_dir, status in ((str(not_a_dir), 1), ("relative/dir", 2)):
        res = flexai_cmd(["ps", "--state-dir", state_dir], env)
        assert res.returncode == status, res.stderr
        assert len(res.stderr.splitlines()) == 1 and res.stderr.startswith("flexai: ")
        assert res.stdout == ""


# ---- flexai resize ------------------------------------------------------------------------------

def test_resize_changes_a_slice(env: dict[str, str]) -> None:
    with flexai.Node(env["FLEXAI_STATE_DIR"]) as node:
        node.set_memory_limit("job-1", UUID_A, 8 * GiB)
    res = flexai_cmd(["resize", "job-1", "--gpu-memory", "6GiB", "--gpu-compute", "30",
                      "--gpu-compute-burst", "100"], env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"job-1: memory 6 GiB, compute 30% (burst 100%) on {UUID_A}"
    (job,) = flexai.NodeSnapshot.read(env["FLEXAI_STATE_DIR"]).slices
    assert [(d.limit_bytes, d.compute, d.burst) for d in job.devices] == [(6 * GiB, 30, 100)]


@pytest.mark.parametrize("args", [
    ["--gpu-compute", "50", "--gpu-compute-burst", "20"],  # exited 1 before errors had a category
    ["--gpu-compute", "101"],
    ["--gpu-memory", "8XB"],
    ["--gpu-compute-burst", "100"],
    [],
])
@pytest.mark.parametrize("existing", [True, False])
def test_resize_bad_values_exit_2(env: dict[str, str], args: list[str], existing: bool) -> None:
    if existing:
        with flexai.Node(env["FLEXAI_STATE_DIR"]) as node:
            node.set_memory_limit("x", UUID_A, GiB)
    res = flexai_cmd(["resize", "x", *args], env)
    assert res.returncode == 2, res.stderr
    assert len(res.stderr.splitlines()) == 1 and "e.g." in res.stderr and res.stdout == ""


def test_resize_unknown_slice_exits_1(env: dict[str, str]) -> None:
    res = flexai_cmd(["resize", "nobody", "--gpu-compute", "50"], env)
    assert res.returncode == 1
    assert res.stderr.startswith("flexai: resize: no slice named 'nobody'")


# ---- flexai demo --------------------------------------------------------------------------------

def _require_simulated_device() -> None:
    missing = [n for n in ("libcuda.so.1",) if not (flexai.sim_dir() / n).is_file()]
    if missing:
        pytest.skip(f"simulated device not built: {', '.join(missing)} missing in "
                    f"{flexai.sim_dir()}")


def test_demo_on_the_simulated_device(env: dict[str, str]) -> None:
    _require_simulated_device()
    res = flexai_cmd(["demo", "--simulated"], env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "simulated device" in res.stdout
    verdict_lines = [line for line in res.stdout.splitlines() if line.endswith("enforced")]
    assert len(verdict_lines) == 2 and "NOT" not in res.stdout


def test_demo_json_shows_quotas_held(env: dict[str, str]) -> None:
    _require_simulated_device()
    res = flexai_cmd(["demo", "--simulated", "--json"], env, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert data["simulated"] is True and data["ok"] is True
    for s in data["slices"]:
        assert 0 < s["allocated_bytes"] <= s["quota_bytes"]
        assert s["charged_bytes"] <= s["quota_bytes"]
    assert all(c["oom"] for c in data["clients"])
    seen = {s["name"]: s["nprocs"] for s in data["ps"]["slices"]}
    assert seen == {"demo-a": 2, "demo-b": 1}
    shares = {c["slice"]: (c["share_percent"], c["achieved"]) for c in data["compute"]}
    assert set(shares) == {"demo-c30", "demo-c70"}
    # each cap holds (at most 10 points over; two uncapped slices would split 50/50) and the
    # larger share gets more; below the share is allowed, as a busy CPU slows the clients down
    for share, achieved in shares.values():
        assert 0 < achieved <= share / 100 + 0.10, shares
    assert shares["demo-c70"][1] > shares["demo-c30"][1], shares


def test_demo_from_the_source_checkout_uses_the_installed_package(env: dict[str, str]) -> None:
    # The README's first command runs `flexai demo` from the repository root, where a
    # `python -m flexai` child would import the checkout's flexai/ (it has no built library).
    script = Path(sys.executable).with_name("flexai")
    if not script.exists():
        pytest.skip("no installed `flexai` console script next to this interpreter")
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run([str(script), "demo", "--simulated"], env=env, cwd=root,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "enforced" in res.stdout
