"""The host tree builder: the reference heaps run per request on host lists, for CPU batches.

On a CPU the batched torch builder (tree_batched.py) spends its time in ~100 small tensor ops per step whatever
the batch, and a tie sends it to the sort-based exact builder (tree_exact.py, slower still); the heaps need only
~K pushes per node and order ties by themselves. So for small CPU batches, and for any CPU batch the fast path
declines, the heaps on Python lists are the cheaper exact builder: one host copy of the [B, L, K] tables in, one
tensor per DraftTree field out. Same trees as `tree.build_tree_ref` by construction (it runs the same heap
functions). Pure torch.
"""
from __future__ import annotations

import math

import torch

from jetspec_sglang.tree import LOGPROB_FLOOR, NO_PARENT, DraftTree, accum_heap, best_first_heap, check_no_nan

# Largest B * N built on the host first: above it the batched fast path (tree_batched) is faster on this project's
# 2-core CPU when it does not decline (float32 drafts: B 16, N 16 0.63 vs 0.49 ms; B 16, N 8 0.41 vs 0.44 ms);
# when it declines (ties: every step of a bf16 draft) `tree.build_tree` comes back here, which beats the exact
# sort-based builder at every size measured (B 128, N 32: 8.9 vs 12.9 ms). bench/bench_tree.py; the table is in
# docs/tree-builders.md.
HOST_MAX_NODES = 128


def use_host_builder(topk_logprobs_BLK: torch.Tensor, budget: int) -> bool:
    """Whether `build_tree_host` is the builder for this batch: CPU tensors and B * N <= HOST_MAX_NODES."""
    return topk_logprobs_BLK.device.type == "cpu" and topk_logprobs_BLK.shape[0] * budget <= HOST_MAX_NODES


def build_tree_host(
    topk_tokens_BLK: torch.Tensor,
    topk_logprobs_BLK: torch.Tensor,
    root_tokens_B: torch.Tensor,
    budget: int,
    fanout_caps_BL: torch.Tensor | None = None,
    best_first: bool = False,
) -> DraftTree:
    """`tree.build_tree_batch_ref`'s trees with one host read and one tensor per field (arguments as
    `tree.build_tree`; NaN log-probs raise ValueError)."""
    B, L, K = topk_tokens_BLK.shape
    check_no_nan(topk_logprobs_BLK)
    tok_BLK = topk_tokens_BLK.tolist()
    lp_BLK = topk_logprobs_BLK.double().clamp(LOGPROB_FLOOR, 0.0).tolist()  # float64, like the official builder
    caps_BL = ([[K] * L] * B if fanout_caps_BL is None
               else fanout_caps_BL.to(torch.int64).clamp(1, K).tolist())
    roots_B = [int(r) for r in root_tokens_B.tolist()]
    heap = best_first_heap if best_first else accum_heap
    tokens, parents, depths, cums, counts = [], [], [], [], []
    for b, root in enumerate(roots_B):
        t, p, d, c = heap(tok_BLK[b], lp_BLK[b], caps_BL[b], root, budget)
        pad = budget - len(t)
        tokens += t + [root] * pad
        parents += p + [NO_PARENT] * pad
        depths += d + [0] * pad
        cums += c + [-math.inf] * pad
        counts.append(len(t))
    device = topk_tokens_BLK.device
    ints_3BN = torch.tensor([tokens, parents, depths], dtype=torch.int64, device=device).view(3, B, budget)
    return DraftTree(
        tokens_BN=ints_3BN[0],
        parents_BN=ints_3BN[1],
        depth_BN=ints_3BN[2],
        num_nodes_B=torch.tensor(counts, dtype=torch.int64, device=device),
        cum_logprobs_BN=torch.tensor(cums, dtype=torch.float32, device=device).view(B, budget),
    )
