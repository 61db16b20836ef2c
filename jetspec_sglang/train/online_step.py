"""One online distillation step on any device: target forward -> blocks -> head forward -> full-vocabulary KL.

Anchors are drawn on the device: every valid position (response token with one token after it) gets a uniform
score from a generator seeded by the step, and the top-A scores are the anchors; a sequence with fewer valid
positions than A gets extra blocks whose slots are all invalid (compute, never loss). The loss is the forward KL
KL(p_target || q_draft) over the whole vocabulary at every valid slot (teacher = target log-probs at position
a + k - 1), uniform or exp(-(k-1)/gamma) depth weights; bf16 autocast on CUDA and CPU with fp32 master weights.
jetspec-method.md 8. Imports no sglang.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from jetspec_sglang.draft_head import DraftHead, block_positions, build_block_mask, make_block_ids
from jetspec_sglang.train.loss import mix_hard_label
from jetspec_sglang.train.signals import SequenceBatch, gather_rows, target_forward, teacher_rows

NO_ANCHOR = -1.0  # score of a position that cannot be an anchor


@dataclasses.dataclass
class OnlineStepOutput:
    loss: torch.Tensor  # scalar, differentiable: weighted mean KL over valid slots
    kl_sum_L: torch.Tensor  # fp32 per-depth KL sums (no grad)
    agree_sum_L: torch.Tensor  # fp32 per-depth count of argmax student == argmax teacher
    count_L: torch.Tensor  # fp32 per-depth count of valid slots


def sample_anchors_device(batch: SequenceBatch, num: int, generator: torch.Generator) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """(anchors_BA int64 sorted, ok_BA bool): up to `num` distinct anchors per sequence in [resp_start, S_b - 2].

    resp_start [1], length [4], num 3 -> anchors {1, 2} plus one padding anchor with ok False.
    """
    b, s = batch.tokens_BS.shape
    device = batch.tokens_BS.device
    pos_BS = torch.arange(s, device=device).expand(b, s)
    valid_BS = (pos_BS >= batch.resp_start_B[:, None]) & (pos_BS <= batch.lengths_B[:, None] - 2)
    score_BS = torch.rand(b, s, device=device, generator=generator).masked_fill(~valid_BS, NO_ANCHOR)
    a = min(num, s)
    score_BA, anchors_BA = score_BS.topk(a, dim=-1)
    ok_BA = score_BA > NO_ANCHOR
    anchors_BA = torch.where(ok_BA, anchors_BA, batch.resp_start_B[:, None].expand(b, a))
    order_BA = anchors_BA.argsort(dim=-1)
    return anchors_BA.gather(1, order_BA), ok_BA.gather(1, order_BA)


class HeadBlocks(nn.Module):
    """The trainable forward as one module (what DDP wraps): taps -> context -> final-normed block hidden states."""

    def __init__(self, head: DraftHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, taps_BSF, embeds_BRM, positions_BR, allowed_B1RK) -> torch.Tensor:
        return self.head.forward_blocks(self.head.project_context(taps_BSF), embeds_BRM, positions_BR, allowed_B1RK)


def online_step(runner: nn.Module, target: nn.Module, layer_ids, batch: SequenceBatch, anchors_per_seq: int,
                weights_L: torch.Tensor, generator: torch.Generator, autocast: bool = True,
                hard_mix: float = 0.0) -> OnlineStepOutput:
    """Forward one batch of sequences (no optimizer work). runner: a HeadBlocks, or DDP(HeadBlocks). hard_mix > 0:
    the KL is to loss.mix_hard_label's teacher (the reported KL too; agreement is to the target's argmax)."""
    cfg = (runner.module if hasattr(runner, "module") else runner).head.config
    q, depth = cfg.block_size, cfg.block_size - 1
    device = batch.tokens_BS.device
    taps_BSF, logits_BSV = target_forward(target, layer_ids, batch.tokens_BS)
    anchors_BA, ok_BA = sample_anchors_device(batch, anchors_per_seq, generator)
    b, a = anchors_BA.shape
    rows_BAL, valid_BAL = teacher_rows(logits_BSV, anchors_BA, batch.lengths_B, depth)
    valid_BAL &= ok_BA[:, :, None]
    embed, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    with torch.no_grad():
        ids_BR = make_block_ids(batch.tokens_BS.gather(1, anchors_BA), cfg.mask_token_id, q)
        embeds_BRM = embed(ids_BR)
        allowed_B1RK = build_block_mask(anchors_BA, batch.tokens_BS.shape[1], q, cfg.causal_head)
        teacher_logp_NV = torch.log_softmax(gather_rows(logits_BSV, rows_BAL, valid_BAL).float(), dim=-1)
    del logits_BSV
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
        hidden_BRM = runner(taps_BSF, embeds_BRM, block_positions(anchors_BA, q), allowed_B1RK)
    hidden_NM = hidden_BRM.view(b, a, q, -1)[:, :, 1:][valid_BAL]  # slot k predicts depth k; anchor row: no loss
    logits_NV = hidden_NM.to(torch.bfloat16) @ lm_head.weight.to(torch.bfloat16).T
    logq_NV = torch.log_softmax(logits_NV.float(), dim=-1)
    mixed_NV, _ = mix_hard_label(teacher_logp_NV, hard_mix)
    kl_N = (mixed_NV.exp() * (mixed_NV - logq_NV)).sum(-1)
    depth_N = torch.arange(depth, device=device).expand(b, a, depth)[valid_BAL]
    w_N = weights_L.to(device)[depth_N]
    loss = (kl_N * w_N).sum() / w_N.sum().clamp_min(1e-9)
    with torch.no_grad():
        agree_N = (logq_NV.argmax(-1) == teacher_logp_NV.argmax(-1)).float()
        zeros = torch.zeros(depth, device=device)
        return OnlineStepOutput(loss, zeros.index_add(0, depth_N, kl_N.detach()), zeros.index_add(0, depth_N, agree_N),
                                zeros.index_add(0, depth_N, torch.ones_like(agree_N)))
