"""PyTorch CPU counterpart of examples/train_bench.rs: the same MLP and char-transformer,
batch size, optimizer and thread count, timed the same way. Prints one JSON line per model.

Usage: python3 train_torch.py STEPS THREADS  (run by scripts/bench-train.sh)
"""

import json
import math
import resource
import sys
import time

import torch
from torch import nn
from torch.nn import functional as F

BATCH = 32


class Block(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x, mask):
        b, t, d = x.shape
        hd = d // self.heads
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, hd)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd) + mask, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(y)
        return x + self.fc2(F.relu(self.fc1(self.ln2(x))))


class CharTransformer(nn.Module):
    def __init__(self, vocab, d, layers, heads, block):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(block, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.register_buffer("mask", torch.triu(torch.full((block, block), -1e9), diagonal=1))

    def forward(self, ids):
        t = ids.shape[1]
        x = self.tok(ids) + self.pos[:t]
        for block in self.blocks:
            x = block(x, self.mask[:t, :t])
        return self.head(self.ln_f(x))


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def timed(name, model, step_fn, steps, warmup, threads):
    for _ in range(warmup):
        step_fn()
    start = time.perf_counter()
    for _ in range(steps):
        step_fn()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "framework": "pytorch " + torch.__version__,
        "model": name,
        "batch": BATCH,
        "threads": threads,
        "steps": steps,
        "stepsPerSecond": steps / seconds,
        "peakRssMiB": peak_rss_mib(),
    }), flush=True)


def main():
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)

    mlp = nn.Sequential(nn.Linear(30, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(BATCH, 30)
    y = torch.arange(BATCH) % 2

    def mlp_step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(mlp(x), y).backward()
        opt.step()

    timed("mlp-30-64-32-2", mlp, mlp_step, steps * 10, 10, threads)

    model = CharTransformer(64, 64, 2, 4, 64)
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    ids = torch.randint(0, 64, (BATCH, 65))
    inputs, targets = ids[:, :64], ids[:, 1:].reshape(-1)

    def char_step():
        opt2.zero_grad(set_to_none=True)
        F.cross_entropy(model(inputs).reshape(-1, 64), targets).backward()
        opt2.step()

    timed("char-transformer-d64-l2-h4-t64", model, char_step, steps, 3, threads)


if __name__ == "__main__":
    main()
