"""Configuration: sizes, per-device lists, validation errors, `python -m flexai.config` output.

Runs against whatever `flexai` is importable; subprocesses get the same package through
PYTHONPATH and a private FLEXAI_STATE_DIR.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import flexai
from flexai import spec
from flexai.node.launch import preload_value
from flexai.spec import SliceSpec

GiB = 1 << 30
MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _library_present() -> None:
    assert flexai.library_path().is_file(), (
        f"{flexai.library_path()} is missing: build and install flexai, or set FLEXAI_LIB_DIR")


def clean_env(state_dir: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without flexai settings, with this package and a state dir."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FLEXAI_") or k == "FLEXAI_LIB_DIR"}
    env.pop("LD_PRELOAD", None)
    pkg_parent = str(Path(flexai.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH")) if p)
    env["FLEXAI_STATE_DIR"] = str(state_dir)
    env.update(extra)
    return env


def run_config(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flexai.config", *args], env=env,
                          capture_output=True, text=True, timeout=60)


# ---- sizes and per-device lists (in process) ---------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("8GiB", 8 * GiB),
    ("4096MiB", 4 * GiB),
    ("1.5GiB", 3 * GiB // 2),
    ("1073741824", GiB),
    ("8G", 8_000_000_000),
    ("512KiB", 512 * 1024),
])
def test_parse_size(text: str, expected: int) -> None:
    assert flexai.parse_size(text) == expected


@pytest.mark.parametrize("text", ["0", "8XB", "-1", "", "1.GiB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(flexai.ConfigError, match="e.g."):
        flexai.parse_size(text)


def test_one_value_for_all_devices() -> None:
    cfg = flexai.parse_config({"FLEXAI_GPU_MEMORY": "8GiB", "FLEXAI_GPU_COMPUTE": "30"})
    assert set(cfg.memory) == {8 * GiB} and set(cfg.compute) == {30}
    assert cfg.memory_text() == "all devices: 8 GiB"
    assert cfg.compute_text() == "all devices: 30% hard cap"


def test_burst_makes_the_share_a_guarantee() -> None:
    cfg = flexai.parse_config({"FLEXAI_GPU_COMPUTE": "30", "FLEXAI_GPU_COMPUTE_BURST": "100"})
    assert set(cfg.burst) == {100}
    assert cfg.compute_text() == "all devices: 30% guaranteed; may burst to 100%"
    cases = [((("FLEXAI_GPU_COMPUTE_BURST", "100"),), "needs FLEXAI_GPU_COMPUTE"),
             ((("FLEXAI_GPU_COMPUTE", "30"), ("FLEXAI_GPU_COMPUTE_BURST", "20")), "below")]
    for bad, needle in cases:
        with pytest.raises(flexai.ConfigError, match=needle):
            flexai.parse_config(dict(bad))


def test_per_device_list() -> None:
    cfg = flexai.parse_config({"FLEXAI_GPU_MEMORY": "0:8GiB,1:4GiB",
                               "FLEXAI_GPU_COMPUTE": "0:30,1:50"})
    assert cfg.memory[:3] == (8 * GiB, 4 * GiB, 0)
    assert cfg.compute[:3] == (30, 50, 0)
    assert cfg.memory_text() == "0: 8 GiB, 1: 4 GiB"


def test_default_with_override() -> None:
    cfg = flexai.parse_config({"FLEXAI_GPU_MEMORY": "4GiB,1:2GiB"})
    assert cfg.memory[0] == 4 * GiB and cfg.memory[1] == 2 * GiB and cfg.memory[-1] == 4 * GiB
    assert cfg.memory_text() == "1: 2 GiB, other devices: 4 GiB"


def test_given_devices_are_remembered() -> None:
    cfg = flexai.parse_config({"FLEXAI_GPU_MEMORY": "4GiB,1:4GiB", "FLEXAI_GPU_COMPUTE": "30"})
    assert cfg.memory_given == (1,) and cfg.compute_given == ()
    assert cfg.memory_text() == "1: 4 GiB, other devices: 4 GiB"  # given, though equal


def test_bad_values_carry_their_category() -> None:
    bad_value = flexai._ffi.constants()["FLEXAI_E_BAD_VALUE"]
    with pytest.raises(flexai.BadValueError) as info:
        flexai.parse_config({"FLEXAI_GPU_COMPUTE": "101"})
    assert info.value.code == bad_value and info.value.category
    assert isinstance(info.value, flexai.ConfigError) and isinstance(info.value, ValueError)
    with pytest.raises(flexai.BadValueError) as info:
        flexai.parse_size("8XB")
    assert info.value.code == bad_value


def test_every_error_category_has_its_exception() -> None:
    from flexai import _ffi

    codes = {v for k, v in _ffi.constants().items() if k.startswith("FLEXAI_E_")}
    classes = {_ffi.error_class(code) for code in codes}
    assert len(classes) == len(codes) and flexai.FlexaiError not in classes
    for code in codes:
        assert _ffi.error_class(code)("x").code == code
    assert _ffi.error_class(999) is flexai.FlexaiError


def test_unusable_state_is_not_a_bad_value(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(flexai.FlexaiError) as info:
        flexai.Node(str(not_a_dir))
    assert not isinstance(info.value, flexai.BadValueError)
    with pytest.raises(flexai.BadValueError, match="FLEXAI_STATE_DIR"):
        flexai.Node("relative/dir")


def test_defaults_and_foreign_variables() -> None:
    cfg = flexai.parse_config({"FLEXAI_SIM_MEMORY": "16GiB", "HOME": "/root"})
    assert not any(cfg.memory) and cfg.memory_text() == "none"
    assert (cfg.priority, cfg.log_level, cfg.slice) == ("normal", "warn", "")
    assert cfg.state_dir == "/dev/shm/flexai" and cfg.libcuda == "libcuda.so.1"


def test_slice_spec_validates_at_construction() -> None:
    spec = SliceSpec(memory="8GiB", compute=30, slice="job-42", priority="high")
    assert spec.env() == {"FLEXAI_GPU_MEMORY": "8GiB", "FLEXAI_GPU_COMPUTE": "30",
                          "FLEXAI_SLICE": "job-42", "FLEXAI_PRIORITY": "high"}
    assert spec.config().memory[0] == 8 * GiB
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.memory = "1GiB"  # type: ignore[misc]
    with pytest.raises(flexai.ConfigError, match=r"FLEXAI_GPU_COMPUTE.*e\.g\."):
        SliceSpec(compute=101)
    with pytest.raises(ValueError, match=r"FLEXAI_SLICE.*e\.g\. FLEXAI_SLICE=job-42"):
        SliceSpec(slice="bad name")


def test_slice_spec_fields_are_contract_variables() -> None:
    by_key = {v.key: v for v in spec.variables()}
    for f in dataclasses.fields(SliceSpec):
        v = by_key[f.metadata["variable"]]
        assert v.per_slice and v.option, f.name


# ---- the contract table ------------------------------------------------------------------------

def test_contract_table_has_the_design_variables() -> None:
    names = [v.name for v in spec.variables()]
    for name in ("FLEXAI_GPU_MEMORY", "FLEXAI_GPU_COMPUTE", "FLEXAI_SLICE", "FLEXAI_PRIORITY",
                 "FLEXAI_STATE_DIR", "FLEXAI_LIBCUDA", "FLEXAI_LIBNVML", "FLEXAI_LOG"):
        assert name in names
    assert len(set(names)) == len(names)
    for v in spec.variables():
        assert v.help and v.example and v.kind in ("sizes", "percents", "choice", "name", "size",
                                                   "path"), v
        assert v.option is None or v.option == "--" + v.key.replace("_", "-"), v
    # the examples are valid (together: the burst's needs the share's): table and parser agree
    spec.parse_config(spec.env_of(**{v.key: v.example for v in spec.variables()}))
    priority = spec.variable("FLEXAI_PRIORITY")
    assert priority.choices == ("low", "normal", "high") and priority.default == "normal"
    with pytest.raises(flexai.NotFoundError):
        spec.variable("gpu_memroy")


def test_env_and_options_come_from_the_table() -> None:
    assert spec.env_of(gpu_memory="8GiB", slice=None) == {"FLEXAI_GPU_MEMORY": "8GiB"}
    assert spec.option_args(gpu_compute=30, slice="a") == ["--gpu-compute", "30", "--slice", "a"]
    with pytest.raises(flexai.NotFoundError):
        spec.option_args(log="debug")  # no option


def test_sim_env_points_at_the_simulated_device(tmp_path: Path) -> None:
    from flexai import sim

    env = sim.sim_env({"LD_LIBRARY_PATH": "/x"}, memory="8GiB", kernel_us=0)
    assert env["LD_LIBRARY_PATH"] == f"{sim.sim_dir()}:/x"
    assert env["FLEXAI_LIBCUDA"] == str(sim.sim_dir() / "libcuda.so.1")
    assert env["FLEXAI_SIM_MEMORY"] == "8GiB" and env["FLEXAI_SIM_KERNEL_US"] == "0"
    assert flexai.parse_config(env).libnvml == str(sim.sim_dir() / "libnvidia-ml.so.1")
    with pytest.raises(TypeError, match="no knob"):
        sim.sim_env({}, memroy="1GiB")


def test_preload_value_prepends_once() -> None:
    lib = str(flexai.library_path())
    assert preload_value(None) == lib
    assert preload_value(f"/x/a.so:{lib} /x/b.so") == f"{lib}:/x/a.so:/x/b.so"


# ---- python -m flexai.config -------------------------------------------------------------------

@pytest.mark.parametrize("args, env_extra, variable", [
    (["--gpu-memory", "0"], {}, "FLEXAI_GPU_MEMORY"),
    (["--gpu-memory", "8XB"], {}, "FLEXAI_GPU_MEMORY"),
    ([], {"FLEXAI_GPU_MEMORY": "-1"}, "FLEXAI_GPU_MEMORY"),
    (["--gpu-memory", "0:1GiB,0:2GiB"], {}, "FLEXAI_GPU_MEMORY"),
    (["--json", "--gpu-memory", "99:1GiB"], {}, "FLEXAI_GPU_MEMORY"),
    (["--gpu-compute", "0"], {}, "FLEXAI_GPU_COMPUTE"),
    (["--export", "--gpu-compute", "101"], {}, "FLEXAI_GPU_COMPUTE"),
    ([], {"FLEXAI_GPU_COMPUTE": "abc"}, "FLEXAI_GPU_COMPUTE"),
    (["--priority", "urgent"], {}, "FLEXAI_PRIORITY"),
    ([], {"FLEXAI_STATE_DIR": "relative/state"}, "FLEXAI_STATE_DIR"),
])
def test_config_rejects(tmp_path: Path, args: list[str], env_extra: dict[str, str],
                        variable: str) -> None:
    res = run_config(args, clean_env(tmp_path, **env_extra))
    assert res.returncode == 2, res.stderr
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith(f"flexai: {variable}:") and "e.g." in lines[0]


def test_config_table(tmp_path: Path) -> None:
    res = run_config(["--gpu-memory", "8GiB"], clean_env(tmp_path))
    assert res.returncode == 0, res.stderr
    assert re.search(r"gpu memory\s+all devices: 8 GiB", res.stdout)
    assert re.search(r"gpu compute\s+none", res.stdout)
    assert str(flexai.library_path()) in res.stdout
    assert res.stderr == ""


def test_config_shows_only_the_devices_given(tmp_path: Path) -> None:
    # drift bug: devices 1..14 were shown as "0 B" (the last entry was taken for a default)
    res = run_config(["--gpu-memory", "0:8GiB,15:4GiB"], clean_env(tmp_path))
    assert res.returncode == 0, res.stderr
    line = next(x for x in res.stdout.splitlines() if x.startswith("gpu memory"))
    assert re.fullmatch(r"gpu memory\s+0: 8 GiB, 15: 4 GiB", line), line
    data = json.loads(run_config(["--json", "--gpu-memory", "0:8GiB,15:4GiB"],
                                 clean_env(tmp_path)).stdout)
    assert data["memory"] == {"0": 8 * GiB, "15": 4 * GiB} and data["memory_given"] == [0, 15]


def test_config_options_come_from_the_contract_table(tmp_path: Path) -> None:
    res = run_config(["--help"], clean_env(tmp_path))
    assert res.returncode == 0, res.stderr
    for v in spec.variables():
        if v.option:
            assert v.option in res.stdout


def test_config_lib(tmp_path: Path) -> None:
    res = run_config(["--lib"], clean_env(tmp_path))
    assert res.returncode == 0 and res.stdout.strip() == str(flexai.library_path())


def test_config_json_fields(tmp_path: Path) -> None:
    env = clean_env(tmp_path, FLEXAI_GPU_MEMORY="1GiB", FLEXAI_LOG="debug",
                    FLEXAI_CONTEXT_MEMORY="0")
    res = run_config(["--json", "--gpu-memory", "4GiB,1:2GiB", "--gpu-compute", "0:30",
                      "--slice", "job-42"], env)  # the option beats the environment
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["memory"]["0"] == 4 * GiB and data["memory"]["1"] == 2 * GiB
    assert data["memory"]["15"] == 4 * GiB and data["memory_text"].endswith("4 GiB")
    assert data["compute"] == {"0": 30}
    assert (data["slice"], data["priority"], data["log_level"]) == ("job-42", "normal", "debug")
    assert data["context_memory"] == 0 and data["state_dir"] == str(tmp_path)
    assert data["library"] == str(flexai.library_path())


def test_config_export_round_trips_through_bash(tmp_path: Path) -> None:
    state = tmp_path / "state dir's"
    env = clean_env(state, LD_PRELOAD="/nonexistent/other.so", FLEXAI_LOG="info")
    res = run_config(["--export", "--gpu-memory", "0:8GiB,1:4GiB", "--slice", "job-42",
                      "--priority", "high"], env)
    assert res.returncode == 0, res.stderr
    shell = subprocess.run(["bash", "-c", 'eval "$1" && env', "bash", res.stdout],
                           env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                           capture_output=True, text=True, timeout=30)
    assert shell.returncode == 0, shell.stderr
    got = dict(line.split("=", 1) for line in shell.stdout.splitlines() if "=" in line)
    assert got["LD_PRELOAD"] == f"{flexai.library_path()}:/nonexistent/other.so"
    assert got["FLEXAI_GPU_MEMORY"] == "0:8GiB,1:4GiB"
    assert got["FLEXAI_SLICE"] == "job-42" and got["FLEXAI_PRIORITY"] == "high"
    assert got["FLEXAI_STATE_DIR"] == str(state) and got["FLEXAI_LOG"] == "info"


def test_config_warns_about_typos(tmp_path: Path) -> None:
    env = clean_env(tmp_path, FLEXAI_GPU_MEM="8GiB", FLEXAI_SIM_MEMORY="16GiB")
    res = run_config([], env)
    assert res.returncode == 0
    assert "FLEXAI_GPU_MEM " in res.stderr and "did you mean FLEXAI_GPU_MEMORY" in res.stderr
    assert "FLEXAI_SIM_MEMORY" not in res.stderr
    assert re.search(r"gpu memory\s+none", res.stdout)


# ---- the cffi declarations follow include/flexai.h ---------------------------------------------

def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def _declarations(text: str) -> dict[str, object]:
    text = _strip_comments(text).replace("FLEXAI_API", "")
    defines = dict(re.findall(r"#define\s+(FLEXAI_[A-Z_]+)\s+(\d+)", text))
    structs = {name: " ".join(body.split()) for name, body in
               re.findall(r"typedef struct (\w+) \{(.*?)\} \1;", text, flags=re.S)}
    functions = {m.group(1): " ".join(m.group(0).split()) for m in
                 re.finditer(r"^[\w \*]+?\b(flexai_\w+)\(.*?\);", text, flags=re.S | re.M)}
    return {"defines": defines, "structs": structs, "functions": functions}


def test_cdefs_match_public_header() -> None:
    header = REPO / "include" / "flexai.h"
    cdefs = Path(flexai.__file__).with_name("_cdefs.h")
    want, have = _declarations(header.read_text()), _declarations(cdefs.read_text())
    assert want["functions"] and want["structs"]
    assert have == want
