"""Replay of greedy speculative decoding: the accept lengths of many tree configurations from one target forward.

Greedy JetSpec emits exactly the plain greedy continuation whatever the head, budget or width; configurations
differ only in how many rounds they need. So, given the continuation `seq_T` (prompt + greedy tokens), the
target's greedy choice at every position (one forward over `seq_T`) and the head's draft for every possible
anchor (one many-block head forward, the training forward), each configuration's rounds replay exactly:
a round at anchor p builds the tree from the draft at p and accepts the nodes on the continuation's path. Used by
bench/bench_accept.py; `ReferenceEngine` runs the same rounds one by one (the benchmark's --validate compares).
No sglang import.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from jetspec_sglang import ops
from jetspec_sglang.config import JetSpecConfig
from jetspec_sglang.draft_head import DraftHead, block_positions, build_block_mask, make_block_ids
from jetspec_sglang.tree import top2gap_fanout_caps


@dataclass(frozen=True)
class Trajectory:
    """One greedy continuation and what the target chose at every position."""

    seq_T: torch.Tensor  # int64: prompt + generated tokens
    prompt_len: int  # P: seq_T[P] is the first generated token (the first anchor)
    choice_T: torch.Tensor  # int64: target argmax at position t (a prediction of seq_T[t + 1])

    @property
    def trusted_end(self) -> int:
        """Last position whose token the replay may use: the continuation is trusted while it equals the target's
        choice (a batched generation can flip a near-tie; the replay stops at the first such position)."""
        T, P = self.seq_T.shape[0], self.prompt_len
        agree = self.choice_T[P:T - 1] == self.seq_T[P + 1:]
        bad = torch.nonzero(~agree)
        return P + int(bad[0]) if bad.numel() else T - 1


@torch.no_grad()
def draft_all_anchors(head: DraftHead, taps_TF: torch.Tensor, seq_T: torch.Tensor, anchors_A: torch.Tensor,
                      width: int, chunk: int = 32, vocab_ids_S: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-depth top-`width` (tokens_ALK int64, logprobs_ALK float32) of the head's draft at every anchor.

    Block a is [seq[anchor_a], MASK x L] at positions anchor_a + k; its context is the taps strictly before the
    anchor (the training mask, `build_block_mask`). Chunked over anchors to bound memory. `vocab_ids_S` (int64):
    draft from these tokens only, normalised over them (the serving worker's draft vocabulary, draft_vocab.py).
    """
    embed, lm_head = head._target()
    Q, L = head.config.block_size, head.config.depth
    out_tokens, out_logprobs = [], []
    for start in range(0, anchors_A.numel(), chunk):
        anchors_1A = anchors_A[None, start: start + chunk]
        s = int(anchors_1A.max())
        context_1SM = head.project_context(taps_TF[None, :s])
        ids_1R = make_block_ids(seq_T[anchors_1A], head.config.mask_token_id, Q)
        hidden_1RM = head.forward_blocks(context_1SM, embed(ids_1R), block_positions(anchors_1A, Q),
                                         build_block_mask(anchors_1A, s, Q, head.config.causal_head))
        hidden_ALM = hidden_1RM.view(anchors_1A.shape[1], Q, -1)[:, 1:]
        logits_ALV = lm_head(hidden_ALM.to(lm_head.weight.dtype))
        if vocab_ids_S is not None:
            logits_ALV = logits_ALV.index_select(-1, vocab_ids_S)  # [A, L, S]
        values, tokens = torch.topk(torch.log_softmax(logits_ALV.float(), dim=-1), width, dim=-1)
        if vocab_ids_S is not None:
            tokens = vocab_ids_S[tokens]
        out_tokens.append(tokens)
        out_logprobs.append(values)
    return torch.cat(out_tokens)[:, :L], torch.cat(out_logprobs)[:, :L]


def replay(traj: Trajectory, tokens_ALK: torch.Tensor, logprobs_ALK: torch.Tensor, budget: int, width: int,
           depth: int, max_new_tokens: int, tree_algo: str = JetSpecConfig.tree_algo, beta: float = 2.0,
           gap0: float = 1.0) -> list[int]:
    """Accept lengths (accepted drafts + 1) of every round of one request, in order.

    tokens_ALK / logprobs_ALK: `draft_all_anchors` for anchors P, P+1, ... (row a = anchor P + a). The first
    token comes from prefill; rounds run until max_new_tokens are emitted or the trusted continuation ends
    (lengths are recorded before that cut, as the engine records them).
    """
    P, end = traj.prompt_len, traj.trusted_end
    seq_T = traj.seq_T
    lengths, emitted, p = [], 1, P
    while emitted < max_new_tokens and p < end:
        tok_1LK = tokens_ALK[p - P, :depth, :width][None]
        lp_1LK = logprobs_ALK[p - P, :depth, :width][None]
        caps = top2gap_fanout_caps(lp_1LK, width, beta, gap0) if tree_algo == "top2gap" else None
        tree = ops.build_tree(tok_1LK, lp_1LK, seq_T[p: p + 1], budget, caps, backend="torch",
                              best_first=tree_algo == "best_first")
        d_N = tree.depth_BN[0]
        pos_N = (p + d_N).clamp(max=end)
        on_seq_N = (tree.tokens_BN[0] == seq_T[pos_N]) & (p + d_N <= end) & (tree.parents_BN[0] >= 0)
        on_seq_N[0] = True
        anc_NN = ops.build_ancestor_mask(tree.parents_BN, depth, backend="torch")[0]
        on_path_N = ~(anc_NN & ~on_seq_N[None, :]).any(-1)
        accepted = int(d_N[on_path_N].max())
        lengths.append(accepted + 1)
        emitted += accepted + 1
        p += accepted + 1
    return lengths
