"""Training blocks: anchors sampled inside the response, the [anchor, MASK x L] inputs, the block mask and the
teacher rows of every supervised slot, batched over sequences.

For anchor a (a response token) and depth k in 1..L, slot (a, k) predicts token a + k; its teacher is the target's
next-token distribution at position a + k - 1, i.e. teacher row a + k - 1 - resp_start of the sequence. Anchors lie in
[resp_start, S - 2] (at least one token after them); slots with a + k > S - 1 run off the end and are masked
(valid = False). The context of block a is the taps of positions j < a only (`build_block_mask`). Sequences are
right-padded to the longest S; padded context rows are never visible because every anchor is < its own S.
jetspec-method.md 8 (anchors, training mask). Local letters as in draft_head.py: A anchors, Q = L + 1, R = A * Q.
Imports no sglang.
"""
from __future__ import annotations

import dataclasses

import torch

from jetspec_sglang.draft_head import block_positions, build_block_mask, make_block_ids


@dataclasses.dataclass
class BlockBatch:
    taps_BSF: torch.Tensor  # bf16 fused taps, right-padded with zeros
    anchors_BA: torch.Tensor  # int64 sequence positions of the anchors
    block_ids_BR: torch.Tensor  # int64 [anchor, MASK x L] per anchor
    positions_BR: torch.Tensor  # int64 anchor + offset
    allowed_B1RK: torch.Tensor  # bool, K = S + R
    teacher_logp_BALK: torch.Tensor  # fp32 top-K teacher log-probs of slot (a, k) (K here = teacher top-k)
    teacher_ids_BALK: torch.Tensor  # int64
    teacher_rest_BAL: torch.Tensor  # fp32 log of the teacher mass outside the top-K
    valid_BAL: torch.Tensor  # bool: the slot's target token exists in the sequence

    @property
    def num_slots(self) -> int:
        return int(self.valid_BAL.sum())


def sample_anchors(resp_start: int, length: int, num: int, generator: torch.Generator | None) -> torch.Tensor:
    """Up to `num` distinct anchors (int64, sorted) drawn uniformly from [resp_start, length - 2].

    resp_start 5, length 9, num 10 -> all of [5, 6, 7] (fewer candidates than asked).
    """
    candidates = length - 1 - resp_start
    if candidates <= 0:
        raise ValueError(f"sample_anchors: a sequence of length {length} with response start {resp_start} has no "
                         f"anchor with a token after it; drop sequences whose response is shorter than 2 tokens")
    if candidates <= num:
        return torch.arange(resp_start, length - 1)
    return (torch.randperm(candidates, generator=generator)[:num] + resp_start).sort().values


def make_batch(sequences: list[dict], anchors: list[torch.Tensor], block_size: int, mask_token_id: int,
               causal: bool) -> BlockBatch:
    """Assemble a BlockBatch from `CacheReader.sequence` dicts and one anchor tensor per sequence.

    Sequences with fewer anchors than the longest list are padded with copies of their first anchor whose slots are
    all invalid (they cost compute, never loss).
    """
    b, q = len(sequences), block_size
    depth = q - 1
    a = max(len(x) for x in anchors)
    s = max(seq["tokens_S"].shape[0] for seq in sequences)
    f = sequences[0]["taps_SF"].shape[1]
    k = sequences[0]["teacher_logp_RK"].shape[1]
    taps_BSF = torch.zeros(b, s, f, dtype=torch.bfloat16)
    anchors_BA = torch.zeros(b, a, dtype=torch.long)
    anchor_ids_BA = torch.zeros(b, a, dtype=torch.long)
    logp_BALK = torch.zeros(b, a, depth, k)
    ids_BALK = torch.zeros(b, a, depth, k, dtype=torch.long)
    rest_BAL = torch.full((b, a, depth), float("-inf"))
    valid_BAL = torch.zeros(b, a, depth, dtype=torch.bool)
    offsets_L = torch.arange(1, q)
    for i, (seq, anc) in enumerate(zip(sequences, anchors)):
        length, p, n = seq["tokens_S"].shape[0], seq["resp_start"], len(anc)
        if n and (int(anc.min()) < p or int(anc.max()) > length - 2):
            raise ValueError(f"make_batch: anchors of sequence {i} must lie in [{p}, {length - 2}], got "
                             f"{anc.tolist()}")
        taps_BSF[i, :length] = seq["taps_SF"]
        padded = torch.cat([anc, anc[:1].expand(a - n)]) if n < a else anc
        anchors_BA[i] = padded
        anchor_ids_BA[i] = seq["tokens_S"][padded]
        target_pos_AL = padded[:, None] + offsets_L  # position of the token slot (a, k) predicts
        valid_AL = target_pos_AL <= length - 1
        valid_AL[n:] = False
        rows_AL = (target_pos_AL - 1 - p).clamp(0, length - 1 - p)  # teacher row (position a + k - 1)
        logp_BALK[i] = seq["teacher_logp_RK"][rows_AL]
        ids_BALK[i] = seq["teacher_ids_RK"][rows_AL]
        rest_BAL[i] = seq["teacher_rest_R"][rows_AL]
        valid_BAL[i] = valid_AL
    return BlockBatch(
        taps_BSF=taps_BSF, anchors_BA=anchors_BA, block_ids_BR=make_block_ids(anchor_ids_BA, mask_token_id, q),
        positions_BR=block_positions(anchors_BA, q), allowed_B1RK=build_block_mask(anchors_BA, s, q, causal),
        teacher_logp_BALK=logp_BALK, teacher_ids_BALK=ids_BALK, teacher_rest_BAL=rest_BAL, valid_BAL=valid_BAL)
