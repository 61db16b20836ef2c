"""Time each per-round op (Triton kernel vs its PyTorch twin) across batch and tree sizes.

    python bench/bench_ops.py --device cuda                  # full grid, H200 targets checked at the end
    python bench/bench_ops.py --device cpu --quick           # twins only (no GPU)
    python bench/bench_ops.py --device cpu --quick --interpret   # + Triton interpreter: NOT a speed measurement

Ops: tree_build (accum_logp and top2gap caps), tree_mask (ancestor mask + positions + retrieve links), verify_mask
(FULL layout, prefix lengths ~ U[256, 1024]), accept_greedy, and "tree+mask" (build then mask, back to back).
Each call is timed on its own after warm-up (CUDA events on GPU: launch gaps included, as a batch-1 round pays
them; perf_counter on CPU); median and p90 in microseconds. Every config is first checked equal to the twin.
Output: JSON lines (--jsonl, default stdout) and a markdown table (--md, default stdout). Needs only torch (and
triton for the Triton column): the imports below pull in nothing else of the stack.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

TARGETS_US = {"tree+mask": 50.0, "accept_greedy": 20.0}  # H200 targets at B=32, N=128 (issue 6)
OP_BUDGET_S = 1.0  # timed loop per (op, backend, B, N) stops after about this long (at least 3 calls)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class BenchConfig:
    device: str  # "cpu" or "cuda"
    batch_sizes: tuple  # B values
    budgets: tuple  # N values
    width: int  # K
    depth: int  # L
    warmup: int
    iters: int
    interpret: bool  # Triton through the interpreter on CPU (correctness only, not speed)
    threads: int  # torch.get_num_threads() during the run
    time_budget_s: float  # stop starting new configs after this long
    jsonl: str | None
    md: str | None


def parse_args(argv=None) -> BenchConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    p.add_argument("--quick", action="store_true", help="fewer sizes and iterations (a smoke run)")
    p.add_argument("--interpret", action="store_true",
                   help="CPU only: also run the Triton kernels under TRITON_INTERPRET=1 (not a speed measurement)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--budgets", type=int, nargs="+", default=None)
    p.add_argument("--width", type=int, default=7)
    p.add_argument("--depth", type=int, default=15)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default 1 on --device cpu: a shared box makes 2+ threads spin)")
    p.add_argument("--time-budget-s", type=float, default=240.0)
    p.add_argument("--jsonl", default=None, help="write JSON lines here (default: stdout)")
    p.add_argument("--md", default=None, help="write the markdown table here (default: stdout)")
    a = p.parse_args(argv)
    if a.interpret:
        if a.device == "cuda":
            p.error("--interpret runs Triton on CPU tensors; use it with --device cpu")
        os.environ["TRITON_INTERPRET"] = "1"  # before the first `import triton`
    import torch

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch sees no CUDA device; use --device cpu")
    threads = a.threads or (1 if device == "cpu" else torch.get_num_threads())
    torch.set_num_threads(threads)
    quick_bs, quick_ns = ((1, 32), (16, 128)) if not a.interpret else ((1, 8), (16, 64))
    return BenchConfig(
        device=device,
        batch_sizes=tuple(a.batch_sizes or (quick_bs if a.quick else (1, 8, 32, 64))),
        budgets=tuple(a.budgets or (quick_ns if a.quick else (16, 64, 128, 256))),
        width=a.width, depth=a.depth,
        warmup=2 if a.interpret else (5 if a.quick else 20),
        iters=a.iters or (3 if a.interpret else (20 if a.quick else 200)),
        interpret=a.interpret, threads=threads, time_budget_s=a.time_budget_s, jsonl=a.jsonl, md=a.md,
    )


def make_inputs(cfg: BenchConfig, B: int, N: int, seed: int = 0) -> dict:
    """Random draft top-K, root tokens, prefix lengths and target choices that follow the tree (on cfg.device)."""
    import torch

    from jetspec_sglang import tree

    gen = torch.Generator().manual_seed(seed * 1009 + B * 31 + N)
    logits_BLV = torch.randn(B, cfg.depth, 4096, generator=gen) * 3
    tokens_BLK, lp_BLK = tree.draft_topk(logits_BLV, cfg.width)
    root_B = torch.randint(0, 4096, (B,), generator=gen)
    t = tree.build_tree(tokens_BLK, lp_BLK, root_B, N)
    choice_BN = torch.randint(0, 4096, (B, N), generator=gen)
    # follow some child at every parent (scatter picks one of the children) so accepted paths are long
    slot_BN = torch.where(t.parents_BN >= 0, t.parents_BN, N)
    choice_BN = torch.cat([choice_BN, choice_BN[:, :1]], 1).scatter(1, slot_BN, t.tokens_BN)[:, :N]
    d = cfg.device
    return dict(tokens_BLK=tokens_BLK.to(d), lp_BLK=lp_BLK.to(d), root_B=root_B.to(d),
                caps_BL=tree.top2gap_fanout_caps(lp_BLK, cfg.width, 2.0, 1.0).to(d),
                prefix_B=torch.randint(256, 1025, (B,), generator=gen).to(d), choice_BN=choice_BN.to(d))


def op_calls(cfg: BenchConfig, x: dict, N: int, backend: str) -> dict:
    """name -> zero-argument callable running that op with `backend`."""
    from jetspec_sglang import ops

    t = ops.build_tree(x["tokens_BLK"], x["lp_BLK"], x["root_B"], N, backend=backend)
    tm = ops.build_tree_mask(t.parents_BN, t.depth_BN, x["prefix_B"], cfg.depth, backend=backend)
    total = int(N * (x["prefix_B"].sum() + len(x["prefix_B"]) * N))  # the worker knows it from seq_lens_sum

    def tree_and_mask():
        tr = ops.build_tree(x["tokens_BLK"], x["lp_BLK"], x["root_B"], N, backend=backend)
        return tr, ops.build_tree_mask(tr.parents_BN, tr.depth_BN, x["prefix_B"], cfg.depth, backend=backend)

    return {
        "tree_build": lambda: ops.build_tree(x["tokens_BLK"], x["lp_BLK"], x["root_B"], N, backend=backend),
        "tree_build[top2gap]": lambda: ops.build_tree(x["tokens_BLK"], x["lp_BLK"], x["root_B"], N, x["caps_BL"],
                                                      backend=backend),
        "tree_mask": lambda: ops.build_tree_mask(t.parents_BN, t.depth_BN, x["prefix_B"], cfg.depth, backend=backend),
        "verify_mask": lambda: ops.build_verify_mask_full(tm.mask_BNN, x["prefix_B"], total, backend=backend),
        "accept_greedy": lambda: ops.accept_greedy(t.tokens_BN, t.parents_BN, t.depth_BN, x["choice_BN"], cfg.depth,
                                                   backend=backend),
        "tree+mask": tree_and_mask,
    }


def _flat(result) -> list:
    """The tensors of a result (DraftTree, TreeMask, AcceptResult, tuples of them, or a tensor), on CPU."""
    import torch

    if isinstance(result, torch.Tensor):
        return [result.cpu()]
    if hasattr(result, "__dataclass_fields__"):
        return [getattr(result, f).cpu() for f in result.__dataclass_fields__]
    return [t for r in result for t in _flat(r)]


def time_call(cfg: BenchConfig, fn) -> list:
    """Per-call times in microseconds after warm-up; slow calls get fewer iterations (about OP_BUDGET_S each)."""
    import torch

    sync = torch.cuda.synchronize if cfg.device == "cuda" else (lambda: None)
    sync()
    fn()  # the first call compiles a Triton kernel if needed; the second sizes the loops below
    sync()
    t1 = time.perf_counter()
    fn()
    sync()
    call_s = max(time.perf_counter() - t1, 1e-7)
    for _ in range(min(cfg.warmup, int(OP_BUDGET_S / 4 / call_s))):
        fn()
    iters = max(3, min(cfg.iters, int(OP_BUDGET_S / call_s)))
    if cfg.device == "cuda":
        pairs = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        return [s.elapsed_time(e) * 1e3 for s, e in pairs]
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e6)
    return times


def p90(values: list) -> float:
    return sorted(values)[min(len(values) - 1, int(round(0.9 * (len(values) - 1))))]


def run(cfg: BenchConfig) -> list:
    import importlib.util

    import torch

    backends = ["torch"]
    if importlib.util.find_spec("triton") is not None and (cfg.device == "cuda" or cfg.interpret):
        backends.append("triton")
    configs = [(B, N) for B in cfg.batch_sizes for N in cfg.budgets]
    try:
        from tqdm import tqdm

        configs_iter = tqdm(configs, desc="bench_ops", file=sys.stderr)
    except ImportError:
        configs_iter = configs
    rows, started = [], time.perf_counter()
    for B, N in configs_iter:
        if time.perf_counter() - started > cfg.time_budget_s:
            print(f"time budget {cfg.time_budget_s}s spent: skipping B={B} N={N} and later", file=sys.stderr)
            continue
        x = make_inputs(cfg, B, N)
        calls = {be: op_calls(cfg, x, N, be) for be in backends}
        for op in calls["torch"]:
            want = _flat(calls["torch"][op]())
            for be in backends:
                equal = True
                if be != "torch":
                    got = _flat(calls[be][op]())
                    equal = len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))
                    if not equal:
                        print(f"MISMATCH: {op} {be} != torch at B={B} N={N}", file=sys.stderr)
                times = time_call(cfg, calls[be][op])
                rows.append(dict(op=op, backend=be, device=cfg.device, B=B, N=N, K=cfg.width, L=cfg.depth,
                                 median_us=round(statistics.median(times), 2), p90_us=round(p90(times), 2),
                                 iters=len(times), equal_to_twin=equal, interpreted=be == "triton" and cfg.interpret))
    return rows


def markdown(cfg: BenchConfig, rows: list) -> str:
    import torch

    where = (torch.cuda.get_device_name() if cfg.device == "cuda"
             else f"CPU ({os.cpu_count()} cores visible, {cfg.threads} torch thread(s))")
    note = " Triton column: INTERPRETER, not a speed measurement." if cfg.interpret else ""
    lines = [f"bench_ops on {where}, K={cfg.width}, L={cfg.depth}, torch {torch.__version__}; "
             f"median / p90 in us per call.{note}", "",
             "| op | B | N | torch median | torch p90 | triton median | triton p90 | torch/triton |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_key = {(r["op"], r["B"], r["N"], r["backend"]): r for r in rows}
    for op, B, N in dict.fromkeys((r["op"], r["B"], r["N"]) for r in rows):
        t, k = by_key.get((op, B, N, "torch")), by_key.get((op, B, N, "triton"))
        cells = [f"{t['median_us']:.1f}", f"{t['p90_us']:.1f}"] if t else ["-", "-"]
        cells += [f"{k['median_us']:.1f}", f"{k['p90_us']:.1f}"] if k else ["-", "-"]
        ratio = f"{t['median_us'] / k['median_us']:.1f}x" if t and k and k["median_us"] > 0 else "-"
        lines.append(f"| {op} | {B} | {N} | " + " | ".join(cells) + f" | {ratio} |")
    if cfg.device == "cuda":
        lines.append("")
        for op, target in TARGETS_US.items():
            r = by_key.get((op, 32, 128, "triton"))
            verdict = "not measured" if r is None else (
                f"{r['median_us']:.1f} us median: {'meets' if r['median_us'] < target else 'MISSES'}")
            lines.append(f"- H200 target {op} at B=32, N=128 < {target:.0f} us: {verdict}")
    return "\n".join(lines) + "\n"


def make_importable() -> None:
    """Run from a bare checkout (no `pip install -e .`): register jetspec_sglang from the repo and kernels/ under
    its installed name jetspec_sglang.kernels, as pyproject's package-dir does. The repo root is NOT put on
    sys.path, so kernels/ never becomes importable as a top-level `kernels` (Hugging Face's package name)."""
    import importlib.util

    for name, folder in (("jetspec_sglang", "jetspec_sglang"), ("jetspec_sglang.kernels", "kernels")):
        if importlib.util.find_spec(name) is None:
            init = os.path.join(ROOT, folder, "__init__.py")
            spec = importlib.util.spec_from_file_location(
                name, init, submodule_search_locations=[os.path.dirname(init)])
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)


def main(argv=None) -> int:
    cfg = parse_args(argv)
    make_importable()
    rows = run(cfg)
    jsonl = "".join(json.dumps(r) + "\n" for r in rows)
    table = markdown(cfg, rows)
    for path, text in ((cfg.jsonl, jsonl), (cfg.md, table)):
        if path:
            with open(path, "w") as f:
                f.write(text)
        else:
            sys.stdout.write(text + ("\n" if text is jsonl else ""))
    mismatches = [r for r in rows if not r["equal_to_twin"]]
    for r in mismatches:
        print(f"MISMATCH {r['op']} {r['backend']} B={r['B']} N={r['N']}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
