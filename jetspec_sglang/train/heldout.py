"""Held-out scores of a head during and after training: per-depth agreement and tree accept length per anchor.

On held-out greedy sequences (the target's own greedy continuations), at every `stride`-th anchor a of the response:
  agreement_k  = P(argmax q_k == argmax p_target at position a + k - 1), k = 1..L;
  tau(N, K)    = 1 + depth of the deepest node of the accum_logp tree (budget N, width K, from the head's per-depth
                 top-K) whose whole root path equals the continuation; the continuation is trusted only while the
                 sequence token equals the target's argmax (a near-tie flipped by batched bf16 generation ends it).
tau here is the mean accept length of a round started at a uniformly drawn anchor; bench/bench_accept.py measures
the rounds of real trajectories (replay.py) and is the number to quote. Imports no sglang.
"""
from __future__ import annotations

import torch
from torch import nn

from jetspec_sglang import ops
from jetspec_sglang.draft_head import DraftHead, block_positions, build_block_mask, make_block_ids
from jetspec_sglang.train.signals import SequenceBatch, target_forward


def tree_accept_lengths(tokens_ALK: torch.Tensor, logprobs_ALK: torch.Tensor, anchor_ids_A: torch.Tensor,
                        continuation_AL: torch.Tensor, trusted_AL: torch.Tensor, budget: int, width: int,
                        depth: int) -> torch.Tensor:
    """accept_A (int64, >= 1): accepted drafts + 1 of the budget-`budget`, width-`width`, depth-`depth` tree at each
    anchor, against the continuation tokens continuation_AL[a, k-1] (the token at depth k), trusted_AL likewise."""
    tree = ops.build_tree(tokens_ALK[:, :depth, :width].contiguous(), logprobs_ALK[:, :depth, :width].contiguous(),
                          anchor_ids_A, budget, None, backend="torch")
    d_AN = tree.depth_BN
    k_AN = (d_AN - 1).clamp(min=0)
    ok_AN = (tree.tokens_BN == continuation_AL.gather(1, k_AN)) & trusted_AL.gather(1, k_AN) & (tree.parents_BN >= 0)
    ok_AN[:, 0] = True
    anc_ANN = ops.build_ancestor_mask(tree.parents_BN, depth, backend="torch")
    on_path_AN = ~(anc_ANN & ~ok_AN[:, None, :]).any(-1)
    return (d_AN * on_path_AN).max(-1).values + 1


@torch.no_grad()
def evaluate_heldout(head: DraftHead, target: nn.Module, layer_ids, batch: SequenceBatch, stride: int = 4,
                     budgets: tuple[int, ...] = (8, 16, 32, 64), width: int = 7, chunk: int = 256) -> dict:
    """{"agree": [L floats], "tau": {"N": float}, "tau_chain": float, "anchors": int} over `batch`."""
    cfg = head.config
    q, depth = cfg.block_size, cfg.block_size - 1
    device = batch.tokens_BS.device
    taps_BSF, logits_BSV = target_forward(target, layer_ids, batch.tokens_BS)
    choice_BS = logits_BSV.argmax(-1)
    del logits_BSV
    embed, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    agree_L, count_L = torch.zeros(depth, device=device), torch.zeros(depth, device=device)
    taus = {n: [] for n in budgets}
    chain = []
    for i in range(batch.tokens_BS.shape[0]):
        length, start = int(batch.lengths_B[i]), int(batch.resp_start_B[i])
        seq_S = batch.tokens_BS[i, :length]
        # trusted[t]: the sequence token at t + 1 is the target's greedy choice at t
        trusted_S = torch.cat([choice_BS[i, :length - 1] == seq_S[1:], torch.zeros(depth + 1, dtype=torch.bool,
                                                                                  device=device)])
        pad_S = torch.cat([seq_S, seq_S.new_zeros(depth + 1)])
        context_1SM = head.project_context(taps_BSF[i:i + 1, :length])
        for c0 in range(start, length - 1, stride * chunk):
            anchors_1A = torch.arange(c0, min(length - 1, c0 + stride * chunk), stride, device=device)[None]
            ids_1R = make_block_ids(seq_S[anchors_1A], cfg.mask_token_id, q)
            hidden_1RM = head.forward_blocks(context_1SM, embed(ids_1R), block_positions(anchors_1A, q),
                                             build_block_mask(anchors_1A, length, q, cfg.causal_head))
            a = anchors_1A.shape[1]
            logits_ALV = lm_head(hidden_1RM.view(a, q, -1)[:, 1:].to(lm_head.weight.dtype)).float()
            logp_ALK, tok_ALK = torch.log_softmax(logits_ALV, -1).topk(width, dim=-1)
            offsets_L = torch.arange(depth, device=device)
            rows_AL = anchors_1A[0, :, None] + offsets_L  # teacher position of depth k = a + k - 1
            cont_AL = pad_S[rows_AL + 1]
            trusted_AL = trusted_S[rows_AL].cumprod(-1).bool()
            valid_AL = rows_AL + 1 <= length - 1
            hit_AL = (tok_ALK[:, :, 0] == choice_BS[i, rows_AL.clamp(max=length - 1)]) & valid_AL
            agree_L += hit_AL.float().sum(0)
            count_L += valid_AL.float().sum(0)
            anchor_ids_A = seq_S[anchors_1A[0]]
            for n in budgets:
                taus[n].append(tree_accept_lengths(tok_ALK, logp_ALK, anchor_ids_A, cont_AL, trusted_AL, n, width,
                                                   depth))
            chain.append(tree_accept_lengths(tok_ALK, logp_ALK, anchor_ids_A, cont_AL, trusted_AL, depth + 1, 1,
                                             depth))
    mean = lambda xs: float(torch.cat(xs).float().mean()) if xs else 0.0  # noqa: E731
    return {"agree": [round(x, 4) for x in (agree_L / count_L.clamp_min(1)).tolist()],
            "tau": {str(n): round(mean(taus[n]), 4) for n in budgets}, "tau_chain": round(mean(chain), 4),
            "anchors": int(sum(t.numel() for t in chain))}
