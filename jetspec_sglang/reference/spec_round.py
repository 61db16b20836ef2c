"""One JetSpec decoding round on an HF target, batch 1 (jetspec-method.md 1 and 7.1):
draft (ONE head forward) -> tree -> verify (ONE target forward over all N nodes) -> accept -> commit.

Owns the decode state and its invariant len(target KV) == len(committed) - 1 == len(head context): the anchor
(last committed token, the previous bonus) is never cached before it is verified. Per-round ops go through
`jetspec_sglang.ops`. No sglang import.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from transformers import DynamicCache

from jetspec_sglang import ops
from jetspec_sglang.config import JetSpecConfig
from jetspec_sglang.draft_head import DraftContextCache
from jetspec_sglang.draft_head_config import DraftHeadConfig
from jetspec_sglang.reference.kv_cache import compact_kv_cache, kv_length
from jetspec_sglang.reference.metrics import RequestMetrics
from jetspec_sglang.reference.sampling import SamplingParams
from jetspec_sglang.reference.tree_verify import verify_tree
from jetspec_sglang.tree import draft_topk, top2gap_fanout_caps
from jetspec_sglang.verify import accept_sampled


class Drafter(Protocol):
    """What the engine needs from a draft head (DraftHead, or a test wrapper around one)."""

    config: DraftHeadConfig

    def new_cache(self, batch_size: int = 1) -> DraftContextCache: ...

    def append_context(self, cache: DraftContextCache, taps_BSF: torch.Tensor) -> None: ...

    def draft_logits(self, cache: DraftContextCache, anchor_ids_B: torch.Tensor) -> torch.Tensor: ...


@dataclass
class DecodeState:
    """Batch-1 decode state shared by the speculative and the plain loops."""

    committed: list[int]  # prompt + emitted tokens; committed[-1] is the anchor, which has no KV yet
    cache: DynamicCache  # target KV of committed[:-1]
    draft_cache: DraftContextCache | None = None  # head context K/V (None in plain decoding)
    pending_taps_BSF: torch.Tensor | None = None  # taps committed last round, appended at the next draft

    def head_context_len(self) -> int:
        pending = 0 if self.pending_taps_BSF is None else self.pending_taps_BSF.shape[1]
        return self.draft_cache.length + pending

    def check_invariant(self) -> None:
        kv, committed = kv_length(self.cache), len(self.committed)
        head = kv if self.draft_cache is None else self.head_context_len()
        if not kv == committed - 1 == head:
            raise RuntimeError(f"decode state broken: target KV {kv}, committed {committed}, head context {head}; "
                               f"expected KV == committed - 1 == head context (an engine bug)")


def speculative_round(target: nn.Module, head: Drafter, state: DecodeState, config: JetSpecConfig,
                      params: SamplingParams, generator: torch.Generator, metrics: RequestMetrics) -> list[int]:
    """Run one round; commit root + accepted nodes; return the emitted tokens (accepted then bonus).

    The caller cuts the returned tokens at EOS / stop / max tokens; the state has committed them all, which is
    harmless because the request ends there.
    """
    L, device = config.depth, state.cache.layers[0].keys.device
    anchor_B = torch.tensor([state.committed[-1]], dtype=torch.int64, device=device)

    with metrics.phase("draft"):
        if state.pending_taps_BSF is not None:  # only the rows committed last round: the cache is incremental
            head.append_context(state.draft_cache, state.pending_taps_BSF)
            state.pending_taps_BSF = None
        draft_logits_BLV = head.draft_logits(state.draft_cache, anchor_B)[:, :L]

    with metrics.phase("tree"):
        width = min(config.width, draft_logits_BLV.shape[-1])
        topk_tokens_BLK, topk_logprobs_BLK = draft_topk(draft_logits_BLV, width)
        caps_BL = None
        if config.tree_algo == "top2gap":
            caps_BL = top2gap_fanout_caps(topk_logprobs_BLK, width, config.top2gap_beta, config.top2gap_gap0)
        tree = ops.build_tree(topk_tokens_BLK, topk_logprobs_BLK, anchor_B, config.budget, caps_BL,
                              backend=config.backend, best_first=config.tree_algo == "best_first")
        n = int(tree.num_nodes_B[0])  # batch 1: drop the padding slots instead of verifying them
        tokens_BN, parents_BN, depth_BN = tree.tokens_BN[:, :n], tree.parents_BN[:, :n], tree.depth_BN[:, :n]

    with metrics.phase("verify"):
        past_len = kv_length(state.cache)
        logits_BNV, taps_BNF = verify_tree(target, head.config.target_layer_ids, state.cache, tokens_BN,
                                           parents_BN, depth_BN, L)

    with metrics.phase("accept"):
        if params.greedy:
            result = ops.accept_greedy(tokens_BN, parents_BN, depth_BN, logits_BNV.argmax(-1), L,
                                       backend=config.backend)
        else:  # lossless sample-and-match (jetspec-method.md 6.2-6.3); no ops entry for it yet
            result = accept_sampled(tokens_BN, parents_BN, depth_BN, logits_BNV, L, *params.tensors(device),
                                    generator=generator)
        accept_len = int(result.accept_lens_B[0])
        path_P = result.path_BP[0, :accept_len]  # root first, path order
        compact_kv_cache(state.cache, past_len, path_P)
        state.pending_taps_BSF = taps_BNF[:, path_P]
        emitted = result.tokens_BP[0, :accept_len].tolist()
        state.committed.extend(emitted)  # accepted tokens, then the bonus = next anchor (uncached)
        state.check_invariant()

    metrics.record_round(accept_len)
    return emitted
