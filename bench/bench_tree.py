"""CPU cost of building draft trees and their verify structures: the batched builder vs looping the reference.

Per cell (B requests, budget N; width K, depth L) it times, after warm-up, with the same realistic draft top-k:
  batched  tree.build_tree on the batch, then mask.build_ancestor_mask, build_retrieve_links, tree_positions
  loop     tree.build_tree_ref per request, then the same three mask functions per request
both for the tree alone and for tree + mask + links + positions, and the two routes build_tree picks between on
CPU for the tree alone: host (tree_host.build_tree_host: taken first when B * N <= HOST_MAX_NODES, and for a
batch the fast path declines) and torch (the batched top-k path, tree_exact.build_tree_exact when it declines, as on
CUDA). It counts how often the fast path (tree_batched.build_tree_topk) declined (a score tie it cannot order).

    python bench/bench_tree.py                       # B in {1, 8, 32} x N in {16, 64, 128, 256}, K=7, L=15
    python bench/bench_tree.py --threads 1 --clock cpu --out runs/bench_tree.jsonl
    python bench/bench_tree.py --logits-dtype bfloat16     # bf16 drafts: frequent exact score ties
    python bench/bench_tree.py --batch-sizes 1 4 16 32 64 --budgets 8 16 32 --depth 7   # the host route's range
Prints one JSON object per cell (stdout, or --out), then a summary table (stderr when the JSON goes to stdout).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from jetspec_sglang.mask import build_ancestor_mask, build_retrieve_links, tree_positions
from jetspec_sglang.tree import build_tree, build_tree_ref, draft_topk
from jetspec_sglang.tree_batched import build_tree_topk
from jetspec_sglang.tree_exact import build_tree_exact
from jetspec_sglang.tree_host import HOST_MAX_NODES, build_tree_host


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...]  # B
    budgets: tuple[int, ...]  # N, root included
    width: int  # K
    depth: int  # L
    vocab: int  # V of the synthetic draft logits
    confidence: float  # max logit boost of the draft's favourite token (peakedness; 0 = flat Gaussian logits)
    logits_dtype: str  # "float32" or "bfloat16" (a bf16 draft head: equal log-probs, i.e. score ties, are common)
    best_first: bool  # the tree algorithm: best_first (the default of JetSpecConfig) or accum_logp
    repeats: int  # timed calls per cell and path (after `warmup`)
    warmup: int
    fallback_draws: int  # fresh inputs per cell used to count fast-path declines
    threads: int  # torch intra-op threads; 0 = torch's default
    clock: str  # "wall" (perf_counter) or "cpu" (thread CPU time: robust on a shared, busy machine)
    seed: int
    out: str | None  # JSON-lines file; None = stdout


def parse_args(argv=None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--budgets", type=int, nargs="+", default=[16, 64, 128, 256])
    p.add_argument("--width", type=int, default=7)
    p.add_argument("--depth", type=int, default=15)
    p.add_argument("--vocab", type=int, default=50_000)
    p.add_argument("--confidence", type=float, default=12.0)
    p.add_argument("--logits-dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--tree-algo", choices=["best_first", "accum_logp"], default="best_first")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--fallback-draws", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    return BenchConfig(tuple(a.batch_sizes), tuple(a.budgets), a.width, a.depth, a.vocab, a.confidence,
                       a.logits_dtype, a.tree_algo == "best_first", a.repeats, a.warmup, a.fallback_draws,
                       a.threads, a.clock, a.seed, a.out)


def draft_inputs(B: int, cfg: BenchConfig, gen: torch.Generator):
    """Realistic draft top-k: Gaussian logits (scale 2) over V tokens plus a boost in [0, confidence) on one token
    per depth row, so the top-1 probability ranges from near-uniform to near-certain as in real drafts."""
    logits_BLV = torch.randn(B, cfg.depth, cfg.vocab, generator=gen) * 2
    favourite_BL1 = torch.randint(0, cfg.vocab, (B, cfg.depth, 1), generator=gen)
    boost_BL1 = torch.rand(B, cfg.depth, 1, generator=gen) * cfg.confidence
    logits_BLV.scatter_add_(2, favourite_BL1, boost_BL1)
    tok_BLK, lp_BLK = draft_topk(logits_BLV.to(getattr(torch, cfg.logits_dtype)), cfg.width)
    root_B = torch.randint(0, cfg.vocab, (B,), generator=gen)
    prefix_B = torch.randint(0, 4096, (B,), generator=gen)
    return tok_BLK, lp_BLK, root_B, prefix_B


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}  # cpu: this thread's CPU time (robust to preemption)


def timings_ms(fns: dict, repeats: int, warmup: int, clock) -> dict[str, list[float]]:
    """Round-robin over `fns` (one call each per repeat), so machine noise hits every path alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = clock()
            fn()
            out[name].append((clock() - t0) * 1e3)
    return out


def summarise(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"min": ms[0], "median": statistics.median(ms), "p90": ms[min(len(ms) - 1, int(0.9 * len(ms)))]}


def bench_cell(B: int, N: int, cfg: BenchConfig, gen: torch.Generator) -> dict:
    tok, lp, root, prefix = draft_inputs(B, cfg, gen)
    L, bf = cfg.depth, cfg.best_first

    def batched_tree():
        return build_tree(tok, lp, root, N, best_first=bf)

    def host_tree():
        return build_tree_host(tok, lp, root, N, best_first=bf)

    def torch_tree():
        return (build_tree_topk(tok, lp, root, N, best_first=bf)
                or build_tree_exact(tok, lp, root, N, best_first=bf))

    def batched_all():
        tree = build_tree(tok, lp, root, N, best_first=bf)
        return (build_ancestor_mask(tree.parents_BN, L), build_retrieve_links(tree.parents_BN),
                tree_positions(tree.depth_BN, prefix))

    def loop_tree():
        return [build_tree_ref(tok[b], lp[b], int(root[b]), N, best_first=bf) for b in range(B)]

    def loop_all():
        out = []
        for b in range(B):
            tree = build_tree_ref(tok[b], lp[b], int(root[b]), N, best_first=bf)
            out.append((build_ancestor_mask(tree.parents_BN, L), build_retrieve_links(tree.parents_BN),
                        tree_positions(tree.depth_BN, prefix[b:b + 1])))
        return out

    row = {"B": B, "N": N, "K": cfg.width, "L": L, "threads": torch.get_num_threads(), "clock": cfg.clock,
           "logits_dtype": cfg.logits_dtype, "best_first": bf, "host_route": B * N <= HOST_MAX_NODES,
           "fast_path": build_tree_topk(tok, lp, root, N, best_first=bf) is not None}
    fns = {"batched_tree": batched_tree, "loop_tree": loop_tree, "batched_all": batched_all, "loop_all": loop_all,
           "host_tree": host_tree, "torch_tree": torch_tree}
    for name, ms in timings_ms(fns, cfg.repeats, cfg.warmup, CLOCKS[cfg.clock]).items():
        row[name + "_ms"] = summarise(ms)
    for what in ("tree", "all"):
        row[f"speedup_{what}"] = row[f"loop_{what}_ms"]["median"] / row[f"batched_{what}_ms"]["median"]
        row[f"speedup_{what}_min"] = row[f"loop_{what}_ms"]["min"] / row[f"batched_{what}_ms"]["min"]
    declined = sum(build_tree_topk(*draft_inputs(B, cfg, gen)[:3], N, best_first=bf) is None
                   for _ in range(cfg.fallback_draws))
    row["fallback_rate"] = declined / max(1, cfg.fallback_draws)
    return row


def summary_table(rows: list[dict]) -> str:
    head = (f"{'B':>3} {'N':>4} | {'tree: batched':>13} {'p90':>6} {'loop':>7} {'x':>5} {'x(min)':>6} | "
            f"{'+mask,links,pos: batched':>24} {'p90':>6} {'loop':>7} {'x':>5} {'x(min)':>6} | {'fallback':>8} | "
            f"{'host':>6} {'torch':>6} {'route':>5}")
    r0 = rows[0]
    lines = [f"ms, median (p90) over repeats; x = loop / batched (median), x(min) = the same on minima; "
             f"{r0['clock']} clock, threads={r0['threads']}, K={r0['K']}, L={r0['L']}, {r0['logits_dtype']} drafts, "
             f"{'best_first' if r0['best_first'] else 'accum_logp'}; fallback = batches the top-k path declined; "
             "host / torch = the tree alone on each CPU route of build_tree, route = the one it takes",
             head, "-" * len(head)]
    for r in rows:
        cells = []
        for what in ("tree", "all"):
            b, lo = r[f"batched_{what}_ms"], r[f"loop_{what}_ms"]
            width = 13 if what == "tree" else 24
            cells.append(f"{b['median']:>{width}.3f} {b['p90']:>6.3f} {lo['median']:>7.3f} "
                         f"{r[f'speedup_{what}']:>5.1f} {r[f'speedup_{what}_min']:>6.1f}")
        lines.append(f"{r['B']:>3} {r['N']:>4} | {cells[0]} | {cells[1]} | {100 * r['fallback_rate']:>7.0f}% | "
                     f"{r['host_tree_ms']['median']:>6.3f} {r['torch_tree_ms']['median']:>6.3f} "
                     f"{'host' if r['host_route'] else 'torch':>5}")
    return "\n".join(lines)


def main(argv=None) -> None:
    cfg = parse_args(argv)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    cells = [(B, N) for B in cfg.batch_sizes for N in cfg.budgets]
    rows = []
    sink = open(cfg.out, "w") if cfg.out else sys.stdout
    try:
        for B, N in tqdm(cells, desc="bench_tree", file=sys.stderr):
            rows.append(bench_cell(B, N, cfg, gen))
            print(json.dumps({"config": {k: v for k, v in asdict(cfg).items() if k != "out"}, **rows[-1]}),
                  file=sink, flush=True)
    finally:
        if cfg.out:
            sink.close()
    print(summary_table(rows), file=sys.stderr if sink is sys.stdout else sys.stdout)


if __name__ == "__main__":
    main()
