"""What the Ascend (ACL) tests share: the ACL test client built against the stand-in runtime
(tests/fake_driver/acl, installed as lib/sim/libascendcl.so and libopapi.so), and a runner.

The stand-in NPUs are the simulated node's devices (FLEXAI_SIM_DEVICES, FLEXAI_SIM_MEMORY,
FLEXAI_SIM_KERNEL_US), so the environment is conftest's ``base_env``. A test module gets the
fixtures with ``pytest_plugins = ["acl_support"]``.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import SIM_DIR, Run, base_env

HERE = Path(__file__).parent
OOM = 207001  # ACL_ERROR_RT_MEMORY_ALLOCATION


def acl_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """conftest's environment (LD_PRELOAD, the simulated node), without a visible-device list."""
    env = base_env(state_dir)
    env.pop("ASCEND_RT_VISIBLE_DEVICES", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def acl_client(tmp_path_factory) -> Path:
    """The ACL client, compiled once per session against the stand-in runtime."""
    if not (SIM_DIR / "libascendcl.so").exists():
        pytest.fail(f"the stand-in Ascend runtime is not built: {SIM_DIR}/libascendcl.so")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler (cc) is needed to build the test clients")
    out = tmp_path_factory.mktemp("acl_client") / "acl_client"
    subprocess.run(
        [cc, "-O1", "-Wall", "-Werror", str(HERE / "clients" / "acl_client.c"), "-o", str(out),
         "-ldl", f"-L{SIM_DIR}", "-l:libascendcl.so", "-l:libopapi.so"],
        check=True,
    )
    return out


@pytest.fixture
def run_acl(acl_client, state_dir):
    """run_acl(*ops, via="link", env={...}) -> Run"""

    def run(*ops: str, via: str = "link", env: dict[str, str] | None = None,
            timeout: float = 60) -> Run:
        proc = subprocess.run([str(acl_client), "--via", via, *ops],
                              env=acl_env(state_dir, **(env or {})), capture_output=True,
                              text=True, timeout=timeout)
        assert proc.returncode == 0, f"acl_client failed ({proc.returncode}): {proc.stderr}"
        return Run(proc)

    return run
