"""GPU check of the automatic budget's device path (glue/budget_feed.py), no SGLang needed.

1. No host-device synchronisation: every BudgetFeed call of a decode step (begin_step, observe) runs under
   torch.cuda.set_sync_debug_mode("error") while the GPU is busy (a matmul queue stands in for the forward).
2. The counts that reach the chooser through the pinned ring equal those of the CPU path on the same paths.
3. Host microseconds per step of fixed vs auto on the CUDA path.
Exit code 0 when 1 and 2 hold. Prints one JSON line.

    python bench/gpu_budget_check.py
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch

from jetspec_sglang.config import JetSpecConfig
from jetspec_sglang.glue.budget_feed import BudgetFeed


def random_accept_index(bs: int, budget: int, depth: int, rng: np.random.Generator) -> torch.Tensor:
    """[bs, L + 1] int32: flat ids b * N + i of a root path with increasing ids, -1 padded."""
    out = np.full((bs, depth + 1), -1, dtype=np.int32)
    for b in range(bs):
        out[b, 0], node = b * budget, 0
        for d in range(1, depth + 1):
            node += 1 + int(rng.integers(0, 3))
            if node >= budget or rng.random() < 0.3:
                break
            out[b, d] = b * budget + node
    return torch.from_numpy(out)


def main() -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        return 2
    dev = torch.device("cuda")
    budget, depth, bs, steps = 64, 15, 16, 400
    rng = np.random.default_rng(0)
    paths = [random_accept_index(bs, budget, depth, rng) for _ in range(32)]
    gpu_paths = [p.to(dev) for p in paths]
    config = JetSpecConfig(budget=budget, depth=depth, budget_schedule=(budget,))  # observe at full width
    a = torch.randn(2048, 2048, device=dev)
    # 1. No synchronisation while the GPU is busy (a sync would show as a RuntimeError from the debug mode).
    feed = BudgetFeed(config, dev)
    torch.cuda.synchronize()
    sync_errors = []
    for s in range(steps):
        for _ in range(4):
            a = torch.tanh(a @ a * 1e-3)
        torch.cuda.set_sync_debug_mode("error")
        try:
            n = feed.begin_step(bs)
            feed.observe(gpu_paths[s % len(gpu_paths)], n)
        except RuntimeError as e:
            sync_errors.append(str(e)[:200])
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    feed._drain()
    busy_observed = float(feed.chooser.accept.seen[1]) > 0
    # 2. The pinned-ring path delivers the same counts as the CPU path (synchronised between steps: no skips).
    feed_gpu, feed_cpu = BudgetFeed(config, dev), BudgetFeed(config, "cpu")
    for s in range(steps):
        feed_gpu.begin_step(bs)
        feed_gpu.observe(gpu_paths[s % len(gpu_paths)], budget)
        torch.cuda.synchronize()
        feed_cpu.begin_step(bs)
        feed_cpu.observe(paths[s % len(paths)], budget)
    feed_gpu._drain()
    observed_gpu = feed_gpu.chooser.accept.seen[1:].copy()
    same = bool(np.allclose(feed_gpu.chooser.accept.hits, feed_cpu.chooser.accept.hits)
                and np.allclose(feed_gpu.chooser.accept.seen, feed_cpu.chooser.accept.seen))
    timings = {}
    for auto in (False, True):
        feed = BudgetFeed(JetSpecConfig(budget=budget, depth=depth, budget_auto=auto), dev)
        t_host = 0.0
        for s in range(steps):
            a = torch.tanh(a @ a * 1e-3)
            t0 = time.perf_counter()
            n = feed.begin_step(bs)
            index = gpu_paths[s % len(gpu_paths)]
            if n != budget:  # ids of the chosen width: keep ids < n and renumber rows
                local = index.long() - torch.arange(bs, device=dev)[:, None] * budget
                index = torch.where((index >= 0) & (local < n), (local + torch.arange(bs, device=dev)[:, None] * n)
                                    .int(), -1)
            t1 = time.perf_counter()
            feed.observe(index, n)
            t_host += (time.perf_counter() - t1) + (t1 - t0)
        torch.cuda.synchronize()
        timings["auto" if auto else "fixed"] = {"host_us_per_step": round(1e6 * t_host / steps, 1),
                                               "chosen": feed.report()["chosen"]}
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "sync_errors": sync_errors[:3],
              "n_sync_errors": len(sync_errors), "busy_loop_observed": busy_observed, "gpu_counts_equal_cpu": same,
              "ranks_observed": int((observed_gpu > 0).sum()), "timings": timings}
    print(json.dumps(result))
    return 0 if same and not sync_errors else 1


if __name__ == "__main__":
    sys.exit(main())
