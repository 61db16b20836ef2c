"""Cost of a `fit` step per 1k supervised positions on this machine: the shipped head's recipe against the cheaper
ones, each change on its own, from one real cache.

Every configuration runs the trainer's own pieces (loop.batch_for_step, step.distill_step, AdamW) on the same
cache and the same head initialisation; warm-up steps are dropped, the rest timed. Phases per step: batch
(assembling blocks from the memory-mapped cache), forward + backward, optimizer. JSON lines on stdout, a table on
stderr, `--out DIR` adds results.jsonl + table.md.

    python bench/bench_train.py --cache runs/cache/mix --steps 6 --warmup 2 --out bench/results/train_cost
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import statistics
import sys
import time

import torch

from jetspec_sglang.train.cache import Cache, open_cache
from jetspec_sglang.train.loop import FitConfig, batch_for_step, build_head, load_target_parts, sampled_vocab
from jetspec_sglang.train.loss import depth_weights
from jetspec_sglang.train.step import distill_step

# name -> FitConfig overrides; "shipped" is the recipe of jetspec_sglang/heads/smollm2-135m-instruct (its README)
CONFIGS = {
    "shipped": dict(threads=1, seqs_per_step=8, anchors_per_seq=12, exact_vocab=0),
    "+2 threads": dict(threads=2, seqs_per_step=8, anchors_per_seq=12, exact_vocab=0),
    "+sampled vocab": dict(threads=2, seqs_per_step=8, anchors_per_seq=12, exact_vocab=8192, tail_samples=1024),
    "+64 anchors": dict(threads=2, seqs_per_step=4, anchors_per_seq=64, exact_vocab=8192, tail_samples=1024),
    "full vocab, 64 anchors": dict(threads=2, seqs_per_step=4, anchors_per_seq=64, exact_vocab=0),
}


def run(name: str, base: FitConfig, target, reader: Cache, steps: int, warmup: int) -> dict:
    cfg = dataclasses.replace(base, **CONFIGS[name])
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    head = build_head(cfg, target, reader)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=(0.9, 0.95), weight_decay=cfg.weight_decay)
    vocab = sampled_vocab(cfg, reader, target)
    weights_L = depth_weights(cfg.block_size - 1, cfg.depth_decay)
    train_ids = reader.train_indices()
    rows = []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = batch_for_step(cfg, reader, train_ids, step)
        t1 = time.perf_counter()
        res = distill_step(head, target.embed_tokens, target.lm_head_weight_VM, batch, weights_L, cfg.chunk,
                           vocab=vocab, generator=torch.Generator().manual_seed(step))
        opt.zero_grad(set_to_none=True)
        res.loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
        t3 = time.perf_counter()
        if step >= warmup:
            rows.append((t1 - t0, t2 - t1, t3 - t2, float(res.count_L.sum())))
    positions = sum(r[3] for r in rows)
    per_k = lambda i: sum(r[i] for r in rows) / positions * 1000  # noqa: E731  seconds per 1k positions
    return dict(config=name, **CONFIGS[name], steps=steps, positions_per_step=positions / steps,
                s_per_step=statistics.median(sum(r[:3]) for r in rows),
                s_per_1k=per_k(0) + per_k(1) + per_k(2), batch_s_per_1k=per_k(0), fwd_bwd_s_per_1k=per_k(1),
                optim_s_per_1k=per_k(2))


def table(results: list[dict]) -> str:
    base = results[0]["s_per_1k"]
    lines = ["| config | threads | seqs x anchors | exact vocab | positions/step | s/step | s per 1k positions "
             "| batch / fwd+bwd / optim | x shipped |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        vocab = "full" if not r["exact_vocab"] else f"{r['exact_vocab']} + {r['tail_samples']} sampled"
        lines.append(f"| {r['config']} | {r['threads']} | {r['seqs_per_step']} x {r['anchors_per_seq']} | {vocab} | "
                     f"{r['positions_per_step']:.0f} | {r['s_per_step']:.2f} | {r['s_per_1k']:.3f} | "
                     f"{r['batch_s_per_1k']:.3f} / {r['fwd_bwd_s_per_1k']:.3f} / {r['optim_s_per_1k']:.3f} | "
                     f"{base / r['s_per_1k']:.1f}x |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", required=True, help="a cache from `python -m jetspec_sglang.train cache`")
    p.add_argument("--model", default="smollm2", help="prepared model name or HF folder")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", default=None, help="directory for results.jsonl + table.md")
    a = p.parse_args()
    from jetspec_sglang.train.__main__ import _model_path

    reader = open_cache(a.cache)
    model = _model_path(a.model)
    target = load_target_parts(model)
    base = FitConfig(cache_dir=a.cache, out_dir="", model=model, steps=10_000, warmup_steps=1)
    results = []
    for name in a.configs:
        results.append(run(name, base, target, reader, a.steps, a.warmup))
        print(json.dumps(results[-1]), flush=True)
    md = table(results)
    print(md, file=sys.stderr)
    if a.out:
        out = pathlib.Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
        (out / "table.md").write_text(f"cache {pathlib.Path(a.cache).name}, {a.steps} timed steps after {a.warmup} "
                                      f"warm-up per config, torch {torch.__version__}\n\n{md}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
