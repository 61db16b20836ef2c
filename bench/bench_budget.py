"""Host cost of the budget policy per decode step (jetspec_sglang.budget): fixed vs auto, no server.

Times what the worker adds per decode step: BudgetFeed.begin_step (interval close, choice) and BudgetFeed.observe
(path counts of a [bs, L + 1] accept_index on CPU, the estimator update). Compare with a decode step (tens of ms
on CPU, ~10 ms on a GPU) to see whether the policy is measurable. JSON lines on stdout, one per configuration.

    python bench/bench_budget.py --budget 16 --depth 7 --batch 1 16 --steps 2000
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from jetspec_sglang.config import JetSpecConfig
from jetspec_sglang.glue.budget_feed import BudgetFeed


def accept_index(bs: int, budget: int, depth: int, gen: torch.Generator) -> torch.Tensor:
    """[bs, L + 1] int32 flat node ids of accepted paths (root first, -1 padded), ids increasing along a path."""
    out = torch.full((bs, depth + 1), -1, dtype=torch.int32)
    for b in range(bs):
        node, length = 0, int(torch.randint(0, depth + 1, (1,), generator=gen))
        out[b, 0] = b * budget
        for d in range(1, length + 1):
            node = min(budget - 1, node + 1 + int(torch.randint(0, 2, (1,), generator=gen)))
            if node == budget - 1 and d > 1 and out[b, d - 1] == b * budget + node:
                break
            out[b, d] = b * budget + node
    return out


def run(config: JetSpecConfig, bs: int, depth: int, steps: int) -> dict:
    feed = BudgetFeed(config, "cpu")
    gen = torch.Generator().manual_seed(0)
    paths = [accept_index(bs, config.budget, depth, gen) for _ in range(16)]
    t_begin = t_observe = 0.0
    for s in range(steps):
        t0 = time.perf_counter()
        n = feed.begin_step(bs)
        t1 = time.perf_counter()
        index = paths[s % len(paths)]
        if n != config.budget:  # re-number the synthetic paths for the chosen width (ids < n only)
            local = index.long() - torch.arange(bs)[:, None] * config.budget
            keep = (index >= 0) & (local < n)
            index = torch.where(keep, (local + torch.arange(bs)[:, None] * n).int(), -1)
        t2 = time.perf_counter()
        feed.observe(index, n)
        t3 = time.perf_counter()
        time.sleep(0.0005)  # a stand-in step so that intervals are positive
        t_begin += t1 - t0
        t_observe += t3 - t2
    return {"policy": feed.chooser.policy, "budget": config.budget, "batch": bs, "steps": steps,
            "begin_step_us": round(1e6 * t_begin / steps, 1), "observe_us": round(1e6 * t_observe / steps, 1),
            "chosen": feed.report()["chosen"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--depth", type=int, default=7)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    p.add_argument("--steps", type=int, default=2000)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    for bs in a.batch:
        for auto in (False, True):
            config = JetSpecConfig(budget=a.budget, depth=a.depth, budget_auto=auto)
            print(json.dumps(run(config, bs, a.depth, a.steps)))


if __name__ == "__main__":
    main()
