"""Online teacher signals: one frozen target forward over a batch of regenerated sequences -> taps + teacher.

The cache stage (cache.py) stores taps and a top-32 teacher on disk, which is what a 2-core CPU can afford. On a GPU
the target forward costs less than reading such a cache, so the online trainer (online.py) recomputes both every
step: the fused taps of `layer_ids` (post-layer residual stream, `taps.taps_from_hidden_states`) and the target's
full-vocabulary next-token log-probs at the rows a batch of blocks supervises. Sequences are right-padded: padding
never changes the causal forward of the real positions before it. jetspec-method.md 8 (teacher). Imports no sglang.
"""
from __future__ import annotations

import dataclasses

import torch

from jetspec_sglang.taps import taps_from_hidden_states

PAD_ID = 0  # right padding; never attended to by a real position (causal) and never supervised


@dataclasses.dataclass
class SequenceBatch:
    tokens_BS: torch.Tensor  # int64, right-padded with PAD_ID
    lengths_B: torch.Tensor  # int64 real length S_b of each sequence
    resp_start_B: torch.Tensor  # int64 index of the first response token (first possible anchor)


def pad_sequences(records: list[dict], max_len: int, device: torch.device | str = "cpu") -> SequenceBatch:
    """Batch `responses.jsonl` records (prompt_ids + response_ids), cut at max_len tokens.

    [{"prompt_ids": [5, 6], "response_ids": [7, 8, 9]}], max_len 4 -> tokens [[5, 6, 7, 8]], lengths [4], resp [2].
    """
    seqs = [(r["prompt_ids"] + r["response_ids"])[:max_len] for r in records]
    starts = [len(r["prompt_ids"]) for r in records]
    for r, s, p in zip(records, seqs, starts):
        if len(s) - p < 2:
            raise ValueError(f"record {r.get('key', '?')}: {len(s) - p} response tokens fit in max_len={max_len} "
                             f"after a {p}-token prompt; an anchor needs one token after it - drop such records "
                             f"or raise --max-seq-len")
    s_max = max(len(s) for s in seqs)
    tokens_BS = torch.full((len(seqs), s_max), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens_BS[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return SequenceBatch(tokens_BS.to(device), torch.tensor([len(s) for s in seqs], device=device),
                         torch.tensor(starts, device=device))


@torch.no_grad()
def target_forward(model: torch.nn.Module, layer_ids, tokens_BS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(taps_BSF bf16, logits_BSV in the model's dtype) of one frozen target forward (HF causal LM)."""
    out = model(input_ids=tokens_BS, output_hidden_states=True, use_cache=False)
    taps_BSF = taps_from_hidden_states(out.hidden_states, layer_ids).to(torch.bfloat16)
    return taps_BSF, out.logits


def teacher_rows(logits_BSV: torch.Tensor, anchors_BA: torch.Tensor, lengths_B: torch.Tensor,
                 depth: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows_BAL int64, valid_BAL bool): slot (a, k) (k = 1..L) is taught by position a + k - 1 and is valid when
    its target token a + k exists. anchors [[3]], length [6], L 3 -> rows [[[3, 4, 5]]], valid [[[T, T, F]]]."""
    offsets_L = torch.arange(depth, device=anchors_BA.device)
    rows_BAL = anchors_BA[:, :, None] + offsets_L
    valid_BAL = rows_BAL + 1 <= lengths_B[:, None, None] - 1
    return rows_BAL.clamp(max=logits_BSV.shape[1] - 1), valid_BAL


def gather_rows(x_BSX: torch.Tensor, rows_BAL: torch.Tensor, valid_BAL: torch.Tensor) -> torch.Tensor:
    """x_NX: the rows rows_BAL[valid_BAL] of each sequence's x_BSX, flattened in (b, a, l) order."""
    b_idx = torch.arange(x_BSX.shape[0], device=x_BSX.device)[:, None, None].expand_as(rows_BAL)
    return x_BSX[b_idx[valid_BAL], rows_BAL[valid_BAL]]
