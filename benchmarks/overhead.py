"""Step time and memory of DoPr-X over X, measured side by side in one run.

Arms are stepped round-robin (one step of each arm in turn) so that machine noise hits all arms
alike; the ratio of medians is printed (for modes that refresh every k steps, the median is over
whole k-step cycles, so the refresh is amortized). Profiled steps per DoPr arm (one full refresh
cycle) give the per-phase split per step: Sigma accumulation in the hooks, factorization, applying
the factor, the base optimizer step. On CUDA the peak allocated memory of each arm's step is
measured as well.

    python benchmarks/overhead.py --model gpt --steps 20            # CPU, ~5M-parameter GPT
    python benchmarks/overhead.py --model cnn --steps 20
    python benchmarks/overhead.py --model gpt --variants "exact:;rows1k:max_rows=1024"   # other modes
    python benchmarks/overhead.py --model gpt --preset gpt2-small --device cuda --dtype bfloat16   # GPU
    python benchmarks/overhead.py --tokens 2048,8192,32768 --bases adamw --variants "exact:;auto:max_rows=auto"
    python benchmarks/overhead.py --tokens 8192 --bases adamw --peers po-soap@every,po-soap@default   # peers

Ratios are given in wall time and in process CPU time (steadier on a shared machine), each beside the analytic
floor of the DoPr arms (``flop_floor``: the ratio if DoPr's extra flops ran as fast as the base's).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from collections.abc import Callable

import torch
from peers import PEERS, available, make_peer
from peers import cycle as peer_cycle
from torch import nn
from torch.nn import functional as F
from torch.profiler import ProfilerActivity, profile

from dopr import DoPr
from dopr.routing import DEFAULT_AUX_PATTERNS, build_bases

PRESETS = {
    "cpu-small": dict(vocab=4096, d=256, layers=4, heads=4, seq=128, batch=8),
    "cpu-10m": dict(vocab=4096, d=384, layers=6, heads=6, seq=256, batch=8),
    "gpt2-small": dict(vocab=50304, d=768, layers=12, heads=12, seq=1024, batch=8),
}


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v = (nn.Linear(d, d, bias=False) for _ in range(3))
        self.proj = nn.Linear(d, d, bias=False)
        self.fc, self.fc2 = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)
        q, k, v = (m(h).view(b, t, self.heads, d // self.heads).transpose(1, 2) for m in (self.q, self.k, self.v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(att)
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, d: int, layers: int, heads: int, seq: int, **_: int) -> None:
        super().__init__()
        self.embed, self.pos_embed = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos_embed(torch.arange(ids.shape[1], device=ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv2d(64, 128, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(128 * 16, 256), nn.ReLU(), nn.Linear(256, 10),
    )


def robo_policy(device: torch.device, batch: int = 64) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """The robosuite bench's FlowPolicy at its defaults (Lift: 2 cameras, 9 low-dim inputs, 7 actions in chunks of
    8) on a fixed random minibatch, and its flow-matching loss."""
    from dopr_bench.robo.policy import FlowPolicy

    g = torch.Generator().manual_seed(0)
    cams, low_dim, act_dim, horizon = ("agentview", "robot0_eye_in_hand"), 9, 7, 8
    model = FlowPolicy(cams, low_dim, act_dim, horizon)
    images = {c: torch.randint(0, 256, (batch, 84, 84, 3), generator=g, dtype=torch.uint8).to(device) for c in cams}
    low, chunk = torch.randn(batch, low_dim, generator=g), torch.randn(batch, horizon, act_dim, generator=g)
    x0, t = torch.randn(batch, horizon * act_dim, generator=g), torch.rand(batch, generator=g)
    low, chunk, x0, t = (v.to(device) for v in (low, chunk, x0, t))
    return model, lambda m: m.loss(images, low, chunk, x0, t)


class Plain:
    """The base optimizer(s) with exactly DoPr's parameter routing, without AP."""

    def __init__(self, model: nn.Module, base: str, lr: float, **base_kwargs: object) -> None:
        self.opts = [o for _, o in build_bases(model, base, lr, base_kwargs, None, None, DEFAULT_AUX_PATTERNS)[0]]

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad()

    def step(self) -> None:
        for o in self.opts:
            o.step()


def state_bytes(opt: object) -> int:
    opts = opt.opts if isinstance(opt, Plain) else [o for _, o in opt.bases]
    total = sum(t.numel() * t.element_size() for o in opts for s in o.state.values() for t in s.values()
                if torch.is_tensor(t))
    if isinstance(opt, DoPr):
        for g in opt.preconditioner.groups.values():
            held = [*vars(g.factor).values(), g.ema] if g.factor is not None else [g.ema]  # the factor's tensors
            total += sum(t.numel() * t.element_size() for t in held if torch.is_tensor(t))
            if g.factor is None or g.factor.kind != "low_rank":  # Sigma's accumulator (Woodbury keeps rows instead)
                total += math.prod(g.sigma_shape()) * 4
    return total


def _value(v: str) -> object:
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_variants(spec: str) -> dict[str, dict[str, object]]:
    """``"exact:;fast:refresh_every=10,sigma=ema"`` -> ``{"exact": {}, "fast": {"refresh_every": 10, ...}}``."""
    out: dict[str, dict[str, object]] = {}
    for item in filter(None, spec.split(";")):
        label, _, opts = item.partition(":")
        out[label.strip()] = {k.strip(): _value(v.strip()) for k, v in (kv.split("=") for kv in opts.split(",") if kv)}
    return out


#: base names beyond dopr's own: Muon with float32 Newton-Schulz (torch's bfloat16 is slow on CPUs without AMX)
BASE_ALIASES: dict[str, tuple[str, dict[str, object]]] = {"muon32": ("muon", {"ns_dtype": torch.float32})}


def cycle(opt: object) -> int:
    """Steps after which a DoPr arm's costs repeat (its refresh period); 1 for its bases."""
    return opt.preconditioner.options.refresh_every if isinstance(opt, DoPr) else 1


def flop_floor(opt: DoPr, rows: int, base_flops: float) -> float:
    """The ratio DoPr-X / X would reach if its extra work ran at the speed of the base's: ``1 + extra / base`` flops.

    Per input group of ``d`` (with the bias) and ``d_out`` outputs over ``m`` rows (``rows`` capped by ``max_rows``):
    Sigma ``2 m d^2`` (``(k+1)/2k`` of it with k symmetric column blocks), factorization ``d^3/3`` plus ``2 d^3/3`` for
    an explicit inverse, application ``2 d_out d^2``. Block-diagonal Sigmas count their blocks.
    """
    from dopr.functional import symmetric_blocks
    from dopr.statistics import auto_row_cap

    ap = opt.preconditioner
    extra = 0.0
    for g in ap.groups.values():
        if g.diagonal:
            continue
        cap = auto_row_cap(g.dim) if ap.options.max_rows == "auto" else ap.options.max_rows
        m = rows if cap is None else min(rows, cap)
        d_out = sum(ap.layers[n].adapter.out_features(ap.layers[n].module) for n in g.members)
        b = g.sigma_shape()[-1]
        k = symmetric_blocks(b)
        inverse = g.factor is not None and g.factor.kind == "inverse"
        extra += g.blocks * (2 * m * b * b * (k + 1) / (2 * k) + b**3 / 3 + (2 * b**3 / 3 if inverse else 0)
                             + 2 * d_out * b * b)
    return 1 + extra / base_flops


def gpt_flops(cfg: dict[str, int], tokens: int) -> float:
    """Forward + backward flops of one step of :class:`GPT`: ``6 n`` per matmul weight, causal attention ``6 n t d``."""
    d, layers = cfg["d"], cfg["layers"]
    weights = layers * 12 * d * d + d * cfg["vocab"]
    return 6 * tokens * weights + layers * 6 * tokens * cfg["seq"] * d


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["gpt", "cnn", "robo"], default="gpt",
                        help="robo: the robosuite bench's image flow policy (2 cameras, 84x84, batch 64)")
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu-small")
    parser.add_argument("--tokens", default=None,
                        help="GPT: comma-separated tokens per step (batch = tokens / seq), each measured in turn")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--bases", default="adamw,muon",
                        help="comma-separated: adamw, muon, ... or muon32 (Muon with float32 Newton-Schulz)")
    parser.add_argument("--variants", default="exact:;fast:refresh_every=10",
                        help="DoPr arms as 'label:k=v,k=v;label2:...' (no options: the default, exact mode)")
    parser.add_argument("--peers", default="",
                        help=f"optional peer arms beside the first base, e.g. po-soap@every,singd@default ({PEERS})")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-phase profile")
    parser.add_argument("--accum", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    results = []
    if args.model == "gpt":
        cfg = PRESETS[args.preset]
        token_counts = [int(t) for t in args.tokens.split(",")] if args.tokens else [cfg["batch"] * cfg["seq"]]
        for tokens in token_counts:
            results.append(measure(args, dict(cfg, batch=max(1, tokens // cfg["seq"]))))
    else:
        results.append(measure(args, None))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=" ".join(sys.argv), runs=results), f, indent=1)


def measure(args: argparse.Namespace, cfg: dict[str, int] | None) -> dict[str, object]:
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    variants = parse_variants(args.variants)
    torch.manual_seed(0)
    if cfg is not None:
        proto = GPT(**cfg)
        data = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"] + 1), device=device)
        loss_fn = lambda m: F.cross_entropy(m(data[:, :-1]).float().flatten(0, 1), data[:, 1:].flatten())  # noqa: E731
        rows, base_flops = cfg["batch"] * cfg["seq"], gpt_flops(cfg, cfg["batch"] * cfg["seq"] * args.accum)
    elif args.model == "robo":
        proto, loss_fn = robo_policy(device)
        rows, base_flops = 0, 0.0
    else:
        proto = cnn()
        x = torch.randn(64, 3, 32, 32, device=device, dtype=dtype)
        y = torch.randint(0, 10, (64,), device=device)
        loss_fn = lambda m: F.cross_entropy(m(x).float(), y)  # noqa: E731
        rows, base_flops = 0, 0.0
    proto = proto.to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in proto.parameters())

    arms: dict[str, tuple[nn.Module, object]] = {}
    cycles: dict[str, int] = {}  # peers: steps per round at their default update frequency (see peers.cycle)
    notes: list[str] = []
    for name in args.bases.split(","):
        base, base_kw = BASE_ALIASES.get(name, (name, {}))
        lr = 0.02 if base == "muon" else 1e-3
        model = copy.deepcopy(proto)
        arms[name] = (model, Plain(model, base, lr, **base_kw))
        for label, kw in variants.items():
            model = copy.deepcopy(proto)
            arms[f"dopr-{name} {label}"] = (model, DoPr(model, base=base, lr=lr, **base_kw, **kw))
    first = args.bases.split(",")[0]
    for spec in filter(None, args.peers.split(",")):
        if not available(spec.partition("@")[0]):
            print(f"peer {spec}: its package is not installed (pip install -e '.[peers]'); left out")
            continue
        model = copy.deepcopy(proto)
        arms[f"{spec} vs {first}"] = (model, make_peer(spec, model, 1e-3))
        cycles[f"{spec} vs {first}"], note = peer_cycle(spec)
        notes += [note] if note else []

    def one_step(model: nn.Module, opt: object) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad()
        for _ in range(args.accum):
            loss_fn(model).backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0

    # Each round runs every arm for the length of its refresh cycle, so a round's time per step is
    # that arm's amortized cost; rounds interleave the arms.
    times: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    peaks: dict[str, int] = {name: 0 for name in arms}
    for i in range(args.warmup + args.steps):
        for name, (model, opt) in arms.items():
            k = cycles.get(name) or cycle(opt)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            spent = [one_step(model, opt) for _ in range(k)]
            if device.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated(device))
            if i >= args.warmup:
                times[name].append(sum(w for w, _ in spent) / k)
                cpu[name].append(sum(c for _, c in spent) / k)

    phases = {} if args.no_profile else profile_phases(arms, one_step, device)
    tokens = f", {args.accum} micro-batches per step" if args.accum > 1 else ""
    where = f"{args.preset}, {rows * args.accum} tokens per step" if cfg is not None else args.model
    print(f"\n{args.model} ({where}), {n_params / 1e6:.1f}M params, {args.dtype} on {args.device}{tokens}, "
          f"median of {args.steps} interleaved rounds")
    print("command: " + " ".join(sys.argv))
    mem_head = f" {'peak MB':>8} {'mem ratio':>9}" if device.type == "cuda" else ""
    print(f"{'arm':<30} {'ms/step':>9} {'ratio':>7} {'cpu ratio':>9} {'floor':>6} {'opt state MB':>13}{mem_head}  "
          "phases ms/step (sigma / factorize / apply / base)")
    rows_out = []
    for name, ts in times.items():
        base = name.split(" ")[-1] if " vs " in name else name.split(" ")[0].removeprefix("dopr-")
        med, cmed = statistics.median(ts), statistics.median(cpu[name])
        ratio, cratio = med / statistics.median(times[base]), cmed / statistics.median(cpu[base])
        opt = arms[name][1]
        floor = flop_floor(opt, rows, base_flops) if isinstance(opt, DoPr) and base_flops else float("nan")
        mb = state_bytes(opt) / 2**20 if isinstance(opt, (DoPr, Plain)) else float("nan")
        p = phases.get(name, {})
        split = " / ".join(f"{p.get(k, float('nan')):.1f}" for k in ("sigma", "factorize", "apply", "base step"))
        mem = f" {peaks[name] / 2**20:>8.0f} {peaks[name] / max(peaks[base], 1):>9.3f}" if device.type == "cuda" else ""
        print(f"{name:<30} {med * 1e3:>9.1f} {ratio:>7.3f} {cratio:>9.3f} {floor:>6.3f} {mb:>13.1f}{mem}  {split}")
        rows_out.append(dict(arm=name, ms=med * 1e3, cpu_ms=cmed * 1e3, ratio=ratio, cpu_ratio=cratio, floor=floor,
                             state_mb=mb, phases_ms=p, **({"peak_mb": peaks[name] / 2**20} if device.type == "cuda"
                                                          else {})))
    for note in notes:
        print("note: " + note)
    return dict(model=args.model, preset=args.preset, config=cfg, params=n_params, dtype=args.dtype,
                device=args.device, steps=args.steps, accum=args.accum, tokens=rows * args.accum, variants=variants,
                rows=rows_out, cycles=cycles, notes=notes)


def profile_phases(arms: dict[str, tuple[nn.Module, object]], one_step: Callable, device: torch.device
                   ) -> dict[str, dict[str, float]]:
    """Per DoPr arm, one profiled refresh cycle split into Sigma / factorize / apply / base step (ms per step)."""
    phases: dict[str, dict[str, float]] = {}
    for name, (model, opt) in arms.items():
        if not isinstance(opt, (DoPr, Plain)):
            continue
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        k = cycle(opt)
        with profile(activities=acts) as prof:
            for _ in range(k):
                one_step(model, opt)
        split = {"sigma": 0.0, "factorize": 0.0, "apply": 0.0, "base step": 0.0}
        for evt in prof.key_averages():
            key = evt.key
            # device time where there is one (CPU time of a CUDA op is only its launch)
            ms = (evt.device_time_total if device.type == "cuda" else evt.cpu_time_total) / 1e3 / k
            if key.startswith("dopr::"):
                split[key.removeprefix("dopr::")] += ms
            elif key.startswith("Optimizer.step#") and "DoPr" not in key:
                split["base step"] += ms
        phases[name] = split
    return phases


if __name__ == "__main__":
    main()
