"""Shared fixtures: the installed library, the simulated device, and the test client programs.

Tests run against the installed package (``pip install .``); ``FLEXAI_LIB_DIR`` points them at a
development build instead. C behaviour is tested through small client programs run under
``LD_PRELOAD`` with the fake driver, exactly as a user's program would run.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import flexai
from flexai import sim
from flexai.node.launch import without_flexai

HERE = Path(__file__).parent
LIB_DIR = flexai.lib_dir()
LIBFLEXAI = LIB_DIR / "libflexai.so"
SIM_DIR = sim.sim_dir()


#: Tests that load libflexai.so into the pytest process itself: a sanitizer build can only run
#: with its runtime preloaded first, so they are left out of sanitizer runs.
loads_library_in_process = pytest.mark.skipif(
    bool(os.environ.get("FLEXAI_TEST_PRELOAD_FIRST")),
    reason="loads the (sanitizer-built) library into the test process")


def pytest_collection_modifyitems(config, items):
    """Skip `gpu` tests cleanly where no NVIDIA driver answers."""
    if sim.real_gpu_present():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and driver")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _outside_the_source_tree(tmp_path, monkeypatch):
    """Run each test (and the `python -m flexai` it starts) from a scratch directory, so that
    the installed package is imported, never the source tree's `flexai/` (which has no lib/)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def clients(tmp_path_factory) -> dict[str, Path]:
    """Compile the client programs once per session against the simulated driver."""
    if not LIBFLEXAI.exists() or not (SIM_DIR / "libcuda.so.1").exists():
        pytest.fail(f"flexai is not built: {LIBFLEXAI} or the simulated device is missing")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler (cc) is needed to build the test clients")
    out = tmp_path_factory.mktemp("clients")
    built = {
        "client": out / "client",
        "wrap_getpid": out / "libwrap_getpid.so",
        "wrap_clock": out / "libwrap_clock.so",
    }
    subprocess.run(
        [cc, "-O1", "-Wall", str(HERE / "clients" / "client.c"), "-o", str(built["client"]),
         "-ldl", f"-L{SIM_DIR}", "-l:libcuda.so.1"],
        check=True,
    )
    for wrapper in ("wrap_getpid", "wrap_clock"):
        subprocess.run(
            [cc, "-O1", "-shared", "-fPIC", str(HERE / "clients" / f"{wrapper}.c"), "-o",
             str(built[wrapper]), "-ldl"],
            check=True,
        )
    return built


@pytest.fixture
def remoted(tmp_path):
    """A ``flexai remoted`` on loopback serving the simulated device (tests/_remote.py), its
    slices' state directory as ``.state_dir``; stopped at the test's end."""
    from _remote import Remoted, server_env

    state = tmp_path / "state"
    state.mkdir()
    with Remoted(server_env(state, tmp_path / "run")) as server:
        server.state_dir = state
        yield server


@pytest.fixture
def state_dir(tmp_path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


def base_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """An environment that runs a program in a slice on the simulated device (flexai.sim).

    Builds it without loading libflexai.so into the test process (see
    ``loads_library_in_process``)."""
    env = without_flexai(os.environ, keep=("FLEXAI_LIB_DIR", "FLEXAI_TEST_PRELOAD_FIRST"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env = sim.sim_env(env, memory="16GiB")
    # A sanitizer build runs with its runtime preloaded first, e.g.
    # FLEXAI_TEST_PRELOAD_FIRST=$(gcc -print-file-name=libasan.so) (see docs/architecture.md)
    first = os.environ.get("FLEXAI_TEST_PRELOAD_FIRST")
    env.update(
        LD_PRELOAD=f"{first}:{LIBFLEXAI}" if first else str(LIBFLEXAI),
        FLEXAI_STATE_DIR=str(state_dir),
        FLEXAI_CONTEXT_MEMORY="0",
    )
    env.update(extra)
    return env


class Run:
    """A finished client run: its JSON lines by operation, and the raw process result."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.proc = proc
        self.lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]

    def op(self, name: str, nth: int = 0) -> dict:
        found = [line for line in self.lines if line["op"] == name]
        assert len(found) > nth, f"no {name!r} #{nth} in {self.lines}; stderr: {self.proc.stderr}"
        return found[nth]

    def rcs(self, name: str) -> list[int]:
        return [line["rc"] for line in self.lines if line["op"] == name]


@pytest.fixture
def run_client(clients, state_dir):
    """run_client(*ops, via="dlsym", env={...}) -> Run"""

    def run(*ops: str, via: str = "dlsym", env: dict[str, str] | None = None,
            timeout: float = 30, preload: str | None = None) -> Run:
        e = base_env(state_dir, **(env or {}))
        if preload is not None:
            e["LD_PRELOAD"] = preload
        proc = subprocess.run([str(clients["client"]), "--via", via, *ops], env=e,
                              capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"client failed ({proc.returncode}): {proc.stderr}"
        return Run(proc)

    return run
