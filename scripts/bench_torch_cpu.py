"""PyTorch eager reference for the CPU TVM step of `tvm train` on 2-D data (not run in CI).

Same network (MLP on [x, emb(t), emb(t - s)], SiLU, sinusoidal features of 1000 * time), same batch,
same TVM step (JVP along s with gradients through it, EMA-target teacher, flow-matching term,
AdamW with betas (0.9, 0.95), both EMA updates), the same skipped unguided teacher pass (w = 1).
Usage: python3 scripts/bench_torch_cpu.py [--batch 1024] [--width 256] [--depth 4] [--steps 100] [--threads 2]
"""
import argparse, copy, math, time
import torch
from torch.func import jvp

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=1024)
p.add_argument("--width", type=int, default=256)
p.add_argument("--depth", type=int, default=4)
p.add_argument("--emb", type=int, default=32)
p.add_argument("--steps", type=int, default=100)
p.add_argument("--warmup", type=int, default=10)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(0)


def emb(x, dim):
    half = dim // 2
    f = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half) * 1000.0
    args = x[:, None] * f[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        sizes = [2 + 2 * a.emb] + [a.width] * a.depth + [2]
        self.layers = torch.nn.ModuleList(torch.nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))

    def forward(self, x, t, gap):
        h = torch.cat([x, emb(t, a.emb), emb(gap, a.emb)], dim=1)
        for i, l in enumerate(self.layers):
            h = l(h)
            if i < len(self.layers) - 1:
                h = torch.nn.functional.silu(h)
        return h


def checkerboard(n):
    u = torch.rand(n, 2)
    i = torch.randint(0, 8, (n,))
    col, row = i % 4, i // 4 * 2 + (i % 4) % 2
    return torch.stack([col - 2 + u[:, 0], row - 2 + u[:, 1]], 1)


def gap_times(n):
    length = torch.sigmoid(torch.randn(n) - 0.8)
    upper = torch.special.ndtr((torch.logit(1 - length) + 0.4))
    z = -0.4 + torch.special.ndtri((torch.rand(n) * upper).clamp_min(1e-30))
    s = torch.sigmoid(z)
    t = torch.clamp(s + length, max=1.0)
    sp = torch.sigmoid(-0.4 + torch.randn(n))
    return t, s, sp


net = MLP()
teacher, ema = copy.deepcopy(net), copy.deepcopy(net)
for m in (teacher, ema):
    m.requires_grad_(False)
opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)


def step():
    x0 = checkerboard(a.batch)
    eps = torch.randn_like(x0)
    t, s, sp = gap_times(a.batch)
    xt = (1 - t[:, None]) * x0 + t[:, None] * eps
    F, dF = jvp(lambda ss: net(xt, t, t - ss), (s,), (torch.ones_like(s),))
    f = xt + (s - t)[:, None] * F
    dfds = F + (s - t)[:, None] * dF
    with torch.no_grad():
        T = teacher(f.detach(), s, torch.zeros_like(s))
    xsp = (1 - sp[:, None]) * x0 + sp[:, None] * eps
    Fss = net(xsp, sp, torch.zeros_like(sp))
    terminal = ((dfds - T) ** 2).mean(1) * (s != t)
    fm = ((Fss - (eps - x0)) ** 2).mean(1)
    loss = (terminal + fm).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for pt, pe, p in zip(teacher.parameters(), ema.parameters(), net.parameters()):
            pt.copy_(p + 0.99 * (pt - p))
            pe.copy_(p + 0.999 * (pe - p))
    return loss.item()


for _ in range(a.warmup):
    step()
times = []
for _ in range(a.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
med = sorted(times)[len(times) // 2]
print(f"torch {torch.__version__} eager, {a.threads} threads: median {1000 * med:.2f} ms/step, {1 / med:.1f} it/s "
      f"over {a.steps} steps, batch {a.batch}, MLP {a.depth}x{a.width}")
