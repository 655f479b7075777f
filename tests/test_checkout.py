"""Running from a source checkout (issue 8, item 12).

From the repository root, ``python -m flexai ...`` imports the checkout's unbuilt ``flexai/``
(no ``lib/``) ahead of the installed package; it must then use the installed distribution's
library. These tests run the venv's interpreter with ``cwd`` = the repository root (the autouse
fixture of conftest.py moves every other test out of the tree).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "flexai"


def _installed_lib() -> Path:
    """The installed distribution's libflexai.so (skip when flexai is only a source tree)."""
    try:
        dist = metadata.distribution("flexai")
    except metadata.PackageNotFoundError:
        pytest.skip("flexai is not installed (pip install .)")
    for f in dist.files or ():
        if f.name == "libflexai.so":
            path = Path(str(f.locate())).resolve()
            if path.is_file() and path.parent.parent != SOURCE.resolve():
                return path
    pytest.skip("the installed flexai has no libflexai.so of its own (an in-place build)")


@pytest.fixture
def from_root(tmp_path):
    """run(*args) -> CompletedProcess: `python *args` in the repository root, without
    FLEXAI_LIB_DIR (which would win over the lookup under test)."""
    if (SOURCE / "lib" / "libflexai.so").exists():
        pytest.skip("the checkout has a built flexai/lib: nothing to fall back from")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEXAI_")}
    env["FLEXAI_STATE_DIR"] = str(tmp_path / "state")

    def run(*args: str, extra_env: dict[str, str] | None = None, timeout: float = 60):
        return subprocess.run([sys.executable, *args], cwd=ROOT, env={**env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=timeout)

    return run


def test_the_checkout_imports_its_own_package_but_the_installed_library(from_root):
    lib = _installed_lib()
    p = from_root("-c", "import flexai; print(flexai.__file__); print(flexai.library_path())")
    assert p.returncode == 0, p.stderr
    module, path = p.stdout.split()
    assert Path(module).resolve().parent == SOURCE.resolve(), "the scenario: the source tree wins"
    assert Path(path).resolve() == lib


def test_config_from_the_repository_root(from_root):
    lib = _installed_lib()
    ok = from_root("-m", "flexai.config", "--gpu-memory", "8GiB", "--json")
    assert ok.returncode == 0, ok.stderr
    assert "not found" not in ok.stderr
    assert "8589934592" in ok.stdout or "8 GiB" in ok.stdout
    bad = from_root("-m", "flexai.config", "--gpu-memory", "8XB")
    assert bad.returncode == 2, bad.stderr
    assert "FLEXAI_GPU_MEMORY" in bad.stderr and "8XB" in bad.stderr
    path = from_root("-m", "flexai.config", "--lib")
    assert path.returncode == 0 and Path(path.stdout.strip()).resolve() == lib


def test_ps_and_run_from_the_repository_root(from_root):
    lib = _installed_lib()
    ps = from_root("-m", "flexai", "ps", "--json")
    assert ps.returncode == 0, ps.stderr
    json.loads(ps.stdout)
    run = from_root("-m", "flexai", "run", "--gpu-memory", "1GiB", "--", sys.executable, "-c",
                    "import os; print(os.environ['LD_PRELOAD'])")
    assert run.returncode == 0, run.stderr
    assert str(lib) in run.stdout or str(lib.resolve()) in run.stdout


def test_nothing_installed_says_what_to_do(from_root):
    """No installed distribution: exit 1 with a message naming `pip install .` and the
    override variable (importlib.metadata is made to find nothing, as in a bare checkout)."""
    code = ("import importlib.metadata as m, sys\n"
            "def none(name): raise m.PackageNotFoundError(name)\n"
            "m.distribution = none\n"
            "from flexai.config import main\n"
            "sys.exit(main(['--gpu-memory', '8GiB']))\n")
    p = from_root("-c", code)
    assert p.returncode == 1, p.stderr
    assert "libflexai.so not found" in p.stderr
    assert "pip install ." in p.stderr and "FLEXAI_LIB_DIR" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, "one line"


def _fake_site(tmp_path: Path, cdefs: bytes) -> Path:
    """A site directory holding a copy of the installed library under a distribution whose
    _cdefs.h is `cdefs`."""
    lib = _installed_lib()
    site = tmp_path / "site"
    (site / "flexai" / "lib").mkdir(parents=True)
    shutil.copy2(lib, site / "flexai" / "lib" / "libflexai.so")
    (site / "flexai" / "_cdefs.h").write_bytes(cdefs)
    info = site / "flexai-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flexai\nVersion: 0.1.0\n")
    (info / "RECORD").write_text("flexai/lib/libflexai.so,,\nflexai/_cdefs.h,,\n"
                                 "flexai-0.1.0.dist-info/METADATA,,\n")
    return site


def test_an_install_of_the_same_api_is_used(from_root, tmp_path):
    site = _fake_site(tmp_path, (SOURCE / "_cdefs.h").read_bytes())
    p = from_root("-m", "flexai.config", "--lib", extra_env={"PYTHONPATH": str(site)})
    assert p.returncode == 0, p.stderr
    assert Path(p.stdout.strip()).resolve() == (site / "flexai/lib/libflexai.so").resolve()


def test_an_install_of_other_sources_is_refused(from_root, tmp_path):
    """An installed library built from another C API would be called through this checkout's
    declarations (cffi ABI mode: wrong layouts, no error): refuse it and say why."""
    site = _fake_site(tmp_path, b"/* another version */\n")
    p = from_root("-m", "flexai.config", "--gpu-memory", "8GiB",
                  extra_env={"PYTHONPATH": str(site)})
    assert p.returncode == 1
    assert "built from other sources" in p.stderr and "pip install ." in p.stderr


def test_flexai_lib_dir_still_wins(from_root, tmp_path):
    """FLEXAI_LIB_DIR is used even when it holds no library (the installed one is not taken
    behind the user's back); the error names the variable."""
    _installed_lib()
    p = from_root("-m", "flexai.config", "--lib", extra_env={"FLEXAI_LIB_DIR": str(tmp_path)})
    assert p.returncode == 1
    assert f"not found at {tmp_path / 'libflexai.so'}" in p.stderr
    assert f"FLEXAI_LIB_DIR is set to {tmp_path}" in p.stderr
