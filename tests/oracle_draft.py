"""Test-only drafter: a real DraftHead whose draft logits are steered towards a known greedy continuation, so that
speculative rounds really accept several tokens (a random head accepts almost nothing).

At every depth d the true token (from a plain autoregressive run) is set to the row max + BOOST (rank 0), except
at one corrupted depth per round: there a wrong token gets max + BOOST and the true one max + BOOST - 1 (rank 1).
With width >= 2 the tree then holds the true token as a second sibling, so the accepted path leaves rank 0 and
compaction gathers non-contiguous nodes; with width 1 the round is rejected at the corrupted depth (partial
acceptance).
It also records every draft call (context length S, anchor, the real head's logits) for the cache test.
"""
from __future__ import annotations

import torch

from jetspec_sglang.draft_head import DraftContextCache, DraftHead

BOOST = 30.0


def corrupt_depth_for(context_len: int, depth: int) -> int | None:
    """The corrupted depth of the round drafted from `context_len` context rows; None (no corruption) if > L."""
    d = 1 + (context_len * context_len + 3 * context_len) % (depth + 2)
    return d if d <= depth else None


class OracleDraft:
    def __init__(self, head: DraftHead, reference_ids: list[int], corrupt: bool = True) -> None:
        self.head, self.config = head, head.config
        self.reference_ids = list(reference_ids)  # prompt + the greedy continuation
        self.corrupt = corrupt
        self.records: list[tuple[int, int, torch.Tensor]] = []  # (S, anchor, real head logits [1, L, V])

    def new_cache(self, batch_size: int = 1) -> DraftContextCache:
        return self.head.new_cache(batch_size)

    def append_context(self, cache: DraftContextCache, taps_BSF: torch.Tensor) -> None:
        self.head.append_context(cache, taps_BSF)

    def draft_logits(self, cache: DraftContextCache, anchor_ids_B: torch.Tensor) -> torch.Tensor:
        logits_BLV = self.head.draft_logits(cache, anchor_ids_B)
        s, (_, L, V) = cache.length, logits_BLV.shape
        self.records.append((s, int(anchor_ids_B[0]), logits_BLV.clone()))
        steered_BLV = logits_BLV.clone()
        bad = corrupt_depth_for(s, L) if self.corrupt else None
        for d in range(1, L + 1):
            if s + d >= len(self.reference_ids):
                break
            true = self.reference_ids[s + d]  # the token at position S + d, predicted by block slot d
            top = float(logits_BLV[0, d - 1].max())
            if d == bad:
                steered_BLV[0, d - 1, (true + 1) % V] = top + BOOST
                steered_BLV[0, d - 1, true] = top + BOOST - 1
            else:
                steered_BLV[0, d - 1, true] = top + BOOST
        return steered_BLV
