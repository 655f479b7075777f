"""The one list of hooked functions (csrc/cuda/hooks.def) agrees with what libflexai.so exports
and with what the simulated driver offers."""
from __future__ import annotations

import ctypes
import re
import subprocess
from pathlib import Path

from conftest import LIBFLEXAI, SIM_DIR

HOOKS_DEF = Path(__file__).parent.parent / "csrc" / "cuda" / "hooks.def"
ACL_HOOKS_DEF = Path(__file__).parent.parent / "csrc" / "acl" / "acl_hooks.def"


def _entries(kind: str) -> set[str]:
    text = HOOKS_DEF.read_text()
    return set(re.findall(rf"^FX_{kind}\((\w+)[,)]", text, flags=re.M))


def _exports(lib: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(lib)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_exports_are_exactly_the_hooks_the_api_and_dlsym():
    hooks = _entries("CUDA_HOOK") | _entries("NVML_HOOK")
    exported = _exports(LIBFLEXAI)
    driver_like = {n for n in exported if n.startswith(("cu", "nvml"))}
    assert driver_like == hooks, "every hooked function is exported, nothing else of the driver"
    assert "dlsym" in exported
    acl = set(re.findall(r"^FX_ACL(?:NN)?_HOOK\((\w+)\)", ACL_HOOKS_DEF.read_text(), flags=re.M))
    assert {n for n in exported if n.startswith("acl")} == acl, "the same for the ACL hooks"
    others = exported - hooks - acl - {"dlsym"}
    assert all(n.startswith("flexai_") for n in others), sorted(others)


def test_every_listed_function_exists_in_the_simulated_driver():
    cuda = _exports(SIM_DIR / "libcuda.so.1")
    nvml = _exports(SIM_DIR / "libnvidia-ml.so.1")
    missing = (_entries("CUDA_HOOK") | _entries("CUDA_REAL")) - cuda
    missing |= (_entries("NVML_HOOK") | _entries("NVML_REAL")) - nvml
    assert not missing, f"the fake driver lacks {sorted(missing)}"


def test_public_header_functions_are_exported():
    header = (Path(__file__).parent.parent / "include" / "flexai.h").read_text()
    declared = set(re.findall(r"^FLEXAI_API [^;(]*?\b(flexai_\w+)\(", header, flags=re.M))
    assert len(declared) >= 10
    assert declared <= _exports(LIBFLEXAI)


def test_loading_the_library_normally_has_no_side_effects(tmp_path):
    # Loaded with dlopen (as the Python bindings do) it must not touch CUDA or the state dir.
    lib = ctypes.CDLL(str(LIBFLEXAI))
    lib.flexai_version.restype = ctypes.c_char_p
    assert re.match(rb"\d+\.\d+", lib.flexai_version())
