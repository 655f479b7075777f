"""Real frameworks on a real NVIDIA GPU (marker `gpu`; skipped where no driver answers).

Each check runs a small program under `flexai run --gpu-memory 4GiB`, as a user would.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.gpu

GiB = 1 << 30
QUOTA = 4 * GiB


def flexai_run(code: str, state_dir, *, slice_name: str = "gpu-test", env=None,
               timeout: float = 300) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("FLEXAI_")}
    e["FLEXAI_STATE_DIR"] = str(state_dir)
    e.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "flexai", "run", "--gpu-memory", "4GiB", "--slice", slice_name,
         "--", sys.executable, "-c", textwrap.dedent(code)],
        env=e, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


TORCH_FILL = """
import json, torch, pynvml
free, total = torch.cuda.mem_get_info()
chunks, oom = [], None
try:
    while len(chunks) < 1000:
        chunks.append(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"))
except torch.OutOfMemoryError as e:
    oom = str(e).splitlines()[0]
got = len(chunks) * (256 << 20)
pynvml.nvmlInit()
nv = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0))
del chunks
torch.cuda.empty_cache()
again = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
again += 1
torch.cuda.synchronize()
print(json.dumps({"total": total, "free": free, "got": got, "oom": oom,
                  "nvml_total": nv.total, "after_free_ok": True}))
"""


@pytest.mark.parametrize("alloc_conf", ["", "expandable_segments:True", "backend:cudaMallocAsync"])
def test_torch_allocators_see_and_respect_the_quota(tmp_path, alloc_conf):
    pytest.importorskip("torch")
    pytest.importorskip("pynvml")
    env = {"PYTORCH_CUDA_ALLOC_CONF": alloc_conf} if alloc_conf else {}
    r = flexai_run(TORCH_FILL, tmp_path, env=env)
    assert r["total"] == QUOTA
    assert r["oom"] is not None, "torch.OutOfMemoryError past the quota"
    assert 2 * GiB < r["got"] <= QUOTA
    assert r["nvml_total"] == QUOTA, "pynvml in the process reports the quota"
    assert r["after_free_ok"]


def test_cupy_is_limited(tmp_path):
    pytest.importorskip("cupy")
    r = flexai_run("""
        import json, cupy
        free, total = cupy.cuda.runtime.memGetInfo()
        held = []
        try:
            while len(held) < 1000:
                held.append(cupy.empty(256 << 20, dtype=cupy.uint8))
        except cupy.cuda.memory.OutOfMemoryError:
            pass
        print(json.dumps({"total": total, "got": len(held) * (256 << 20)}))
        """, tmp_path)
    assert r["total"] == QUOTA
    assert 2 * GiB < r["got"] <= QUOTA


def test_jax_preallocates_its_fraction_of_the_quota(tmp_path):
    pytest.importorskip("jax")
    r = flexai_run("""
        import json, jax, jax.numpy as jnp
        x = jnp.ones(1024) + 1
        x.block_until_ready()
        stats = jax.devices()[0].memory_stats() or {}
        print(json.dumps({"limit": stats.get("bytes_limit", 0)}))
        """, tmp_path)
    # XLA preallocates 75% of what the driver reports: of the quota, not of the card
    assert 0.5 * QUOTA < r["limit"] <= QUOTA


def test_two_processes_of_one_slice_share_the_quota(tmp_path):
    pytest.importorskip("torch")
    hold = """
        import json, sys, time, torch
        x = torch.empty(2 << 30, dtype=torch.uint8, device="cuda")
        print(json.dumps({"held": 2 << 30}), flush=True)
        time.sleep(30)
        """
    e = {k: v for k, v in os.environ.items() if not k.startswith("FLEXAI_")}
    e["FLEXAI_STATE_DIR"] = str(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-m", "flexai", "run", "--gpu-memory", "4GiB", "--slice", "pair", "--",
         sys.executable, "-c", textwrap.dedent(hold)], env=e, stdout=subprocess.PIPE, text=True)
    try:
        assert "held" in holder.stdout.readline()
        r = flexai_run(TORCH_FILL, tmp_path, slice_name="pair")
        # the holder's 2 GiB and both contexts come out of the same 4 GiB
        assert r["free"] < 2 * GiB
        assert r["got"] < 2 * GiB
    finally:
        holder.kill()
        holder.wait()


WRAPPED = """
import json, os, sys
import flexai.torch
flexai.torch.use_slice(memory="4GiB", compute=50, slice="wrapped-gpu")
import torch
import torch.multiprocessing as mp

def child(q):
    q.put(torch.cuda.mem_get_info()[1])

if __name__ == "__main__":
    flexai.torch.install_oom_hint()
    total = torch.cuda.mem_get_info()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    child_total = q.get(timeout=120)
    p.join()
    loader = torch.utils.data.DataLoader(list(range(8)), num_workers=2)
    assert sum(int(x) for x in loader) == 28
    f = torch.compile(lambda x: torch.sin(x) * 2)
    y = f(torch.randn(1024, device="cuda"))
    g = torch.cuda.CUDAGraph()
    static = torch.randn(1024, device="cuda")
    with torch.cuda.graph(g):
        out = static * 3
    for _ in range(10):
        g.replay()
    torch.cuda.synchronize()
    try:
        torch.empty(8 << 30, dtype=torch.uint8, device="cuda")
        oom = False
    except torch.OutOfMemoryError:
        oom = True
    print(json.dumps({"total": total, "child_total": child_total, "oom": oom,
                      "stats": flexai.torch.memory_stats()}))
"""


def test_flexai_torch_wrapper_on_a_real_gpu(tmp_path):
    pytest.importorskip("torch")
    script = tmp_path / "wrapped.py"
    script.write_text(WRAPPED)
    e = {k: v for k, v in os.environ.items() if not k.startswith("FLEXAI_")}
    e["FLEXAI_STATE_DIR"] = str(tmp_path / "state")
    proc = subprocess.run([sys.executable, str(script)], env=e, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["total"] == QUOTA and r["child_total"] == QUOTA, "spawned children join the slice"
    assert r["oom"]
    assert "is at its memory quota" in proc.stderr, "the OOM says which quota was hit"
    (stats,) = r["stats"].values()
    assert stats["slice"] == "wrapped-gpu" and stats["compute"] == 50
