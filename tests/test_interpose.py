"""How the shim finds the real dlsym (csrc/interpose/dlsym.c, dlsym_entry.S; issue 8, item 14).

tests/interpose/dlsym_order.c links dlsym.c and the exported assembly entry into one program,
with glibc's dlvsym behind a stub that can refuse version names (dlsym.c is compiled with
``-Ddlvsym=fx_test_dlvsym``, nothing else of it changes). What this proves, on the glibc the
test runs on:

- the names are tried in order and the first one glibc has wins (``pass``);
- with ``GLIBC_2.34`` refused, the lookup lands on the architecture's pre-2.34 name
  (``GLIBC_2.2.5`` on x86-64, ``GLIBC_2.17`` on aarch64): the name a glibc before 2.34 defines
  in libdl.so.2. A glibc of 2.34 or later keeps that name as a compatibility symbol, which is
  what answers here; a real glibc before 2.34 is not run;
- when every known name fails, the walk over the version names libc defines finds dlsym, the
  newest first;
- when nothing answers at all, dlsym returns NULL (one error line) instead of jumping to
  address 0 (the code before this test segfaulted there).

The aarch64 cases run only where a cross compiler and qemu-user are installed
(``apt-get install gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user``); they run the
aarch64 assembly entry under emulation, with Debian's aarch64 glibc. The NULL check in the
assembly entry itself is not reached by any case: fx_dlsym_lookup always leaves a non-NULL
fx_real_dlsym before it returns.
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
HERE = Path(__file__).parent / "interpose"
CFLAGS = ["-std=gnu11", "-O2", "-g", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-Wshadow",
          "-Wconversion", "-Wmissing-prototypes", "-Wformat=2",
          f"-I{ROOT / 'include'}", f"-I{ROOT / 'csrc' / 'core'}",
          f"-I{ROOT / 'csrc' / 'interpose'}"]
#: The version dlsym had in libdl.so.2 before glibc 2.34, by architecture.
OLD_VERSION = {"x86_64": "GLIBC_2.2.5", "aarch64": "GLIBC_2.17"}
AARCH64_SYSROOT = Path("/usr/aarch64-linux-gnu")


def _build(cc: str, out: Path) -> None:
    obj = out.with_suffix(".dlsym.o")
    steps = [
        [cc, *CFLAGS, "-Ddlvsym=fx_test_dlvsym", "-c", str(ROOT / "csrc/interpose/dlsym.c"),
         "-o", str(obj)],
        [cc, *CFLAGS, str(HERE / "dlsym_order.c"), str(obj),
         str(ROOT / "csrc/interpose/dlsym_entry.S"), str(ROOT / "csrc/core/log.c"), "-o",
         str(out), "-ldl"],
    ]
    for cmd in steps:
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            pytest.fail(f"building {out.name} failed:\n{' '.join(cmd)}\n{p.stderr}")


@pytest.fixture(scope="session", params=["native", "aarch64"])
def program(request, tmp_path_factory):
    """(arch, command prefix): the lookup program, built for this machine or for aarch64."""
    out = tmp_path_factory.mktemp("interpose")
    if request.param == "native":
        arch = platform.machine()
        if arch not in OLD_VERSION:
            pytest.skip(f"no assembly entry for {arch}")
        cc = shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            pytest.skip("a C compiler (cc or gcc) is needed")
        _build(cc, out / "dlsym_order")
        return arch, [str(out / "dlsym_order")]
    cc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if platform.machine() == "aarch64":
        pytest.skip("aarch64 is the native case here")
    if not cc or not qemu or not (AARCH64_SYSROOT / "lib").is_dir():
        pytest.skip("needs aarch64-linux-gnu-gcc, libc6-dev-arm64-cross and qemu-user")
    _build(cc, out / "dlsym_order")
    return "aarch64", [qemu, "-L", str(AARCH64_SYSROOT), str(out / "dlsym_order")]


def _run(program, mode: str) -> tuple[list[dict], dict, subprocess.CompletedProcess]:
    _, prefix = program
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    p = subprocess.run([*prefix, mode], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, f"{mode}: exit {p.returncode} (a jump to 0 is -11)\n{p.stderr}"
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    asked = [line for line in lines if line["op"] == "dlvsym"]
    (result,) = [line for line in lines if line["op"] == "result"]
    return asked, result, p


def _works(result: dict) -> None:
    assert result["real_set"] and result["getpid"] and result["again"] and result["pid_ok"]
    assert result["next"], "RTLD_NEXT from the program still finds libc's getpid"
    assert result["missing_null"]


def test_the_first_version_glibc_has_wins(program):
    arch, _ = program
    asked, result, _ = _run(program, "pass")
    _works(result)
    assert result["winner"] in ("GLIBC_2.34", OLD_VERSION[arch])
    assert asked[-1]["found"] and not any(a["found"] for a in asked[:-1])
    assert len(asked) <= 3, "a known name answers; the walk is not needed"


def test_before_glibc_2_34_the_architectures_old_version_is_used(program):
    arch, _ = program
    asked, result, _ = _run(program, "deny:GLIBC_2.34")
    _works(result)
    assert result["winner"] == OLD_VERSION[arch]
    assert [a["version"] for a in asked][0] == "GLIBC_2.34"


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", name))


def test_when_no_known_name_answers_the_walk_over_libcs_versions_finds_dlsym(program):
    asked, result, _ = _run(program, "deny-once")
    _works(result)
    known = [a["version"] for a in asked[:3]]
    assert known == ["GLIBC_2.34", "GLIBC_2.2.5", "GLIBC_2.17"]
    walk = asked[3:]
    assert walk and walk[-1]["found"] and walk[-1]["version"] == result["winner"]
    winner = _version_key(result["winner"])
    tried = [a["version"] for a in walk[:-1]]
    numbered = [v for v in tried if re.fullmatch(r"GLIBC_[\d.]+", v)]
    assert all(_version_key(v) > winner for v in numbered), f"newest first: {tried}"


def test_when_nothing_answers_dlsym_returns_null_instead_of_jumping_to_0(program):
    asked, result, p = _run(program, "deny-all")
    assert len(asked) > 3, "the walk tried libc's own version names"
    assert result["real_set"], "fx_real_dlsym holds the stand-in, never NULL"
    assert not result["getpid"] and not result["again"] and not result["next"]
    errors = [line for line in p.stderr.splitlines() if "real dlsym was not found" in line]
    assert len(errors) == 1, p.stderr
