"""csrc/cuda/cuda_api.h re-declares the driver ABI (flexai builds without a CUDA toolkit). Where a
toolkit is installed, compare sizes, offsets and constants with NVIDIA's own headers."""
from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
HEADERS = sorted(glob.glob("/usr/local/cuda*/include/cuda.h"))

PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include HEADER
int main(void) {
    printf("%zu %zu %zu %zu %zu\n", sizeof(CUDA_ARRAY_DESCRIPTOR), sizeof(CUDA_ARRAY3D_DESCRIPTOR),
           sizeof(CUmemAllocationProp), offsetof(CUmemAllocationProp, location),
           offsetof(CUmemAllocationProp, allocFlags));
    printf("%d %d %d %d %d %d\n", (int)CUDA_ERROR_OUT_OF_MEMORY, (int)CUDA_ERROR_NOT_INITIALIZED,
           (int)CUDA_ERROR_NO_DEVICE, (int)CUDA_ERROR_OPERATING_SYSTEM, (int)CUDA_ERROR_NOT_FOUND,
           (int)CU_AD_FORMAT_FLOAT);
    printf("%zu\n", sizeof(CUuuid));
#ifdef WITH_NVML
    printf("%zu %zu\n", sizeof(nvmlMemory_v2_t), offsetof(nvmlMemory_v2_t, free));
#endif
    return 0;
}
"""


def _probe(tmp_path: Path, header: str, includes: list[str], name: str, nvml: bool) -> str:
    src = tmp_path / f"{name}.c"
    src.write_text(PROBE.replace("HEADER", header))
    exe = tmp_path / name
    flags = ["-DWITH_NVML"] if nvml else []
    subprocess.run(["cc", *flags, *[f"-I{i}" for i in includes], str(src), "-o", str(exe)],
                   check=True)
    return subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(not HEADERS or not shutil.which("cc"), reason="no CUDA toolkit headers here")
def test_declared_abi_matches_nvidia_headers(tmp_path):
    inc = Path(HEADERS[-1]).parent
    nvml = (inc / "nvml.h").exists()
    theirs = _probe(tmp_path, "<cuda.h>\n#include <nvml.h>" if nvml else "<cuda.h>", [str(inc)],
                    "theirs", nvml)
    ours = _probe(tmp_path, '"cuda_api.h"', [str(ROOT / "csrc" / "cuda")], "ours", nvml)
    assert ours == theirs
