"""One small GPU job for packing.py and train_overhead.py (PyTorch). Warms up, waits at the
barrier (BENCH_BARRIER), runs for SECONDS, prints its throughput as JSON.

    python pack_worker.py resnet18 BATCH SECONDS        inference, fp16, synchronized per batch
    python pack_worker.py transformer BATCH SECONDS     a small transformer training step
    python pack_worker.py resnet50-train BATCH SECONDS  ResNet-50 training step (AMP)
    python pack_worker.py gpt-train BATCH SECONDS       a small GPT training step (AMP)
"""
from __future__ import annotations

import json
import os
import sys
import time

import torch
import torch.nn as nn


def resnet(depth: int) -> nn.Module:
    import torchvision

    return getattr(torchvision.models, f"resnet{depth}")(weights=None)


class TinyGPT(nn.Module):
    def __init__(self, vocab: int = 8192, d: int = 384, layers: int = 6, seq: int = 256):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(seq, d))
        layer = nn.TransformerEncoderLayer(d, 6, 4 * d, batch_first=True, norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers)
        self.head = nn.Linear(d, vocab)
        self.mask = nn.Transformer.generate_square_subsequent_mask(seq)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx) + self.pos[: idx.shape[1]]
        return self.head(self.body(x, mask=self.mask.to(idx.device), is_causal=True))


def make_step(kind: str, batch: int):
    dev = "cuda"
    if kind == "resnet18":
        model = resnet(18).to(dev).half().eval()
        x = torch.randn(batch, 3, 224, 224, device=dev, dtype=torch.half)

        def step() -> None:
            with torch.no_grad():
                model(x)
            torch.cuda.synchronize()
        return step
    if kind in ("transformer", "gpt-train"):
        small = kind == "transformer"
        model = TinyGPT(d=256 if small else 384, layers=4 if small else 6,
                        seq=128 if small else 256).to(dev)
        seq = 128 if small else 256
        idx = torch.randint(0, 8192, (batch, seq), device=dev)
    elif kind == "resnet50-train":
        model = resnet(50).to(dev)
        idx = torch.randn(batch, 3, 224, 224, device=dev)
    else:
        raise SystemExit(f"pack_worker: unknown job {kind!r}")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = nn.CrossEntropyLoss()
    target = (torch.randint(0, 8192, idx.shape[:2], device=dev) if kind != "resnet50-train"
              else torch.randint(0, 1000, (batch,), device=dev))

    def train_step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(idx)
            loss = loss_fn(out.flatten(0, -2) if out.dim() == 3 else out, target.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
    return train_step


def main() -> None:
    kind, batch, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    step = make_step(kind, batch)
    for _ in range(10):
        step()
    if os.environ.get("BENCH_BARRIER"):
        print("ready", flush=True)
        sys.stdin.readline()
    times = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    times.sort()
    print(json.dumps({"job": kind, "batch": batch, "steps": len(times),
                      "items_per_s": len(times) * batch / wall,
                      "step_ms_median": 1e3 * times[len(times) // 2]}), flush=True)


if __name__ == "__main__":
    main()
