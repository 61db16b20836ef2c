"""One distillation forward: a BlockBatch through the draft head and the borrowed lm_head -> loss and metrics.

Shared by the training loop and the evaluation, so both score exactly the same quantity. The head runs under bf16
autocast (AMX); the target's embedding and lm_head are frozen and only read. Imports no sglang.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from jetspec_sglang.draft_head import DraftHead
from jetspec_sglang.train.blocks import BlockBatch
from jetspec_sglang.train.loss import SampledVocab, forward_kl_fused, mix_hard_label


@dataclasses.dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, differentiable: weighted mean KL over valid slots
    kl_sum_L: torch.Tensor  # fp32 per-depth sum of KL over valid slots (no grad)
    agree_sum_L: torch.Tensor  # fp32 per-depth count of argmax student == argmax teacher
    count_L: torch.Tensor  # fp32 per-depth count of valid slots
    accept_sum: float  # sum over blocks of the leading run of agreeing depths (greedy chain acceptance proxy)
    num_blocks: int  # blocks whose every slot is valid (the ones accept_sum counts)


def distill_step(head: DraftHead, embed_tokens: nn.Module, lm_head_weight_VM: torch.Tensor, batch: BlockBatch,
                 weights_L: torch.Tensor, chunk: int = 512, autocast: bool = True, vocab: SampledVocab | None = None,
                 generator: torch.Generator | None = None, hard_mix: float = 0.0) -> StepOutput:
    """Forward the batch; loss = sum_slots w_k * KL / sum_slots w_k over valid slots (jetspec-method.md 8).

    vocab None: the full-vocabulary KL (evaluation always); else the sampled estimate of loss.SampledVocab, drawn
    with `generator`. hard_mix > 0: the KL is to loss.mix_hard_label's teacher (training only; kl_sum_L then
    reports that KL, agreement is unchanged)."""
    b, a, depth = batch.valid_BAL.shape
    q = depth + 1
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        context_BSM = head.project_context(batch.taps_BSF)
        with torch.no_grad():
            embeds_BRM = embed_tokens(batch.block_ids_BR)
        hidden_BRM = head.forward_blocks(context_BSM, embeds_BRM, batch.positions_BR, batch.allowed_B1RK)
    hidden_BALM = hidden_BRM.view(b, a, q, -1)[:, :, 1:]  # slot k of a block predicts depth k; the anchor row has no loss
    valid = batch.valid_BAL
    logp_NK, rest_N = mix_hard_label(batch.teacher_logp_BALK[valid], hard_mix, batch.teacher_rest_BAL[valid])
    kl_N, argmax_N = forward_kl_fused(hidden_BALM[valid], lm_head_weight_VM, logp_NK, batch.teacher_ids_BALK[valid],
                                      rest_N, chunk, vocab, generator)
    w_N = weights_L.expand(b, a, depth)[valid]
    loss = (kl_N * w_N).sum() / w_N.sum().clamp_min(1e-9)
    with torch.no_grad():
        depth_N = torch.arange(depth).expand(b, a, depth)[valid]
        agree_N = (argmax_N == batch.teacher_ids_BALK[valid][:, 0]).float()
        kl_sum_L = torch.zeros(depth).index_add_(0, depth_N, kl_N.detach())
        agree_sum_L = torch.zeros(depth).index_add_(0, depth_N, agree_N)
        count_L = torch.zeros(depth).index_add_(0, depth_N, torch.ones_like(agree_N))
        agree_BAL = torch.zeros(b, a, depth)
        agree_BAL[valid] = agree_N
        full_B_A = valid.all(-1)
        run_BA = agree_BAL.cumprod(-1).sum(-1)  # leading agreeing depths
        accept_sum, num_blocks = float(run_BA[full_B_A].sum()), int(full_B_A.sum())
    return StepOutput(loss, kl_sum_L, agree_sum_L, count_L, accept_sum, num_blocks)
