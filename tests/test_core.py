"""Deterministic unit tests of the vendor-free core: time-share schedules replayed with a
simulated clock (tests/core/), one pytest test per case of the C program.

The C program is built here from the source tree with the project's strict warnings, so these
tests need a C compiler but neither the installed library nor a device. A case whose C table
entry names a known bug runs as an expected failure (pytest's xfail); once the bug is fixed the
program reports XPASS and the test fails until the mark is removed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
CORE = ROOT / "csrc" / "core"
HERE = Path(__file__).parent / "core"
SOURCES = [HERE / "test_timeshare.c", HERE / "sim.c", CORE / "timeshare.c", CORE / "seal.c",
           CORE / "util.c", CORE / "log.c"]
CFLAGS = ["-std=gnu11", "-O2", "-g", "-D_GNU_SOURCE", "-Wall", "-Wextra", "-Werror", "-Wshadow",
          "-Wconversion", "-Wmissing-prototypes", "-Wformat=2"]
INCLUDES = [f"-I{ROOT / 'include'}", f"-I{CORE}", f"-I{HERE}"]


def _case_names() -> list[str]:
    """Case names as the C table lists them (read at collection, before anything is built)."""
    text = (HERE / "test_timeshare.c").read_text()
    return re.findall(r'^\s*\{"(\w+)", fx_case_\w+,', text, flags=re.M)


CASES = _case_names()


@pytest.fixture(scope="session")
def timeshare(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("a C compiler (cc or gcc) is needed to build the core unit tests")
    flags = list(CFLAGS)
    if os.environ.get("FLEXAI_TEST_PRELOAD_FIRST"):  # a sanitizer run: check the core too
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer"]
    out = tmp_path_factory.mktemp("core") / "test_timeshare"
    build = subprocess.run([cc, *flags, *INCLUDES, *map(str, SOURCES), "-o", str(out)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.fail(f"building the core unit tests failed:\n{build.stderr}")
    return out


def _run(binary: Path, *args: str) -> subprocess.CompletedProcess:
    # no LD_PRELOAD: the core is linked in; a preloaded sanitizer runtime would be in the way
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60,
                          env=env)


def test_case_list_matches_the_table(timeshare):
    listed = _run(timeshare, "--list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split() == CASES
    assert len(CASES) >= 10


def test_unknown_case_is_a_usage_error(timeshare):
    bad = _run(timeshare, "no_such_case")
    assert bad.returncode == 2
    assert "no case no_such_case" in bad.stderr


@pytest.mark.parametrize("case", CASES)
def test_timeshare_case(timeshare, case):
    r = _run(timeshare, case)
    report = r.stdout + r.stderr
    xfail = re.search(rf"^XFAIL {case} .*known bug: (.*)$", r.stdout, flags=re.M)
    if xfail and r.returncode == 0:
        pytest.xfail(xfail.group(1))
    assert r.returncode == 0, f"case {case} failed:\n{report}"
    assert re.search(rf"^ok {case} ", r.stdout, flags=re.M), report


def test_all_cases_run_in_milliseconds(timeshare):
    """The whole replay (tens of thousands of admissions) never sleeps: it takes well under a
    second of CPU, however long the simulated schedules are."""
    start = time.perf_counter()
    r = _run(timeshare)
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, r.stdout + r.stderr
    per_case = [float(ms) for ms in re.findall(r"^(?:ok|XFAIL) \w+ \(([\d.]+) ms\)", r.stdout,
                                               flags=re.M)]
    assert len(per_case) == len(CASES), r.stdout
    limit = 5.0 if os.environ.get("FLEXAI_TEST_PRELOAD_FIRST") else 2.0
    assert elapsed < limit, f"{elapsed:.2f} s for all cases:\n{r.stdout}"
