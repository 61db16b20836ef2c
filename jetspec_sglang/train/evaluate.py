"""Held-out evaluation of a saved head: per-depth greedy agreement, per-depth KL and the chain acceptance proxy.

Scores the cache's held-out sequences (never trained on) with anchors at every `anchor_stride`-th response position,
through the same `distill_step` as training (uniform weights), with the head loaded by `load_draft_head` from the
official layout, so what is measured is what ships. Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib

import torch
from tqdm import tqdm

from jetspec_sglang.draft_head import load_draft_head
from jetspec_sglang.train.blocks import make_batch
from jetspec_sglang.train.cache import Cache, open_cache
from jetspec_sglang.train.loop import tap_columns, load_target_parts
from jetspec_sglang.train.loss import depth_weights
from jetspec_sglang.train.step import distill_step

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    head: str  # head directory (config.json + model.safetensors)
    cache_dir: str
    model: str  # target folder
    anchor_stride: int = 2
    max_anchors_per_batch: int = 64
    max_sequences: int = 0  # 0 = every held-out sequence
    threads: int = 1
    out: str | None = None  # JSON result path


def score_heldout(head, target, reader: Cache, ids: list[int], anchor_stride: int = 2,
                  max_anchors_per_batch: int = 64, progress: bool = False) -> dict:
    """Full-vocabulary scores of `head` on cache sequences `ids` with anchors at every anchor_stride-th response
    position: {"agree": per-depth greedy agreement, "kl": per-depth KL, "kl_mean", "accept_len" (chain proxy),
    "slots"}. No gradient; the head is read as it is (fit calls this between steps)."""
    hc = head.config
    cols = tap_columns(reader, hc.target_layer_ids)
    depth = hc.block_size - 1
    kl_L, agree_L, count_L = torch.zeros(depth), torch.zeros(depth), torch.zeros(depth)
    accept, blocks = 0.0, 0
    with torch.no_grad():
        for i in tqdm(ids, desc="eval", unit="seq", disable=not progress):
            seq = reader.sequence(i)
            seq["taps_SF"] = seq["taps_SF"][:, cols]
            length = seq["tokens_S"].shape[0]
            anchors = torch.arange(seq["resp_start"], length - 1, anchor_stride)
            for part in anchors.split(max_anchors_per_batch):
                batch = make_batch([seq], [part], hc.block_size, hc.mask_token_id, hc.causal_head)
                res = distill_step(head, target.embed_tokens, target.lm_head_weight_VM, batch,
                                   depth_weights(depth, None))
                kl_L += res.kl_sum_L
                agree_L += res.agree_sum_L
                count_L += res.count_L
                accept += res.accept_sum
                blocks += res.num_blocks
    count = count_L.clamp_min(1)
    return dict(slots=int(count_L.sum()), kl_mean=float(kl_L.sum() / count_L.sum().clamp_min(1)),
                agree=[round(x, 4) for x in (agree_L / count).tolist()],
                kl=[round(x, 4) for x in (kl_L / count).tolist()], accept_len=accept / max(blocks, 1))


def evaluate(cfg: EvalConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    reader = open_cache(cfg.cache_dir)
    target = load_target_parts(cfg.model)
    head = load_draft_head(cfg.head, target_config=target.config, dtype=torch.float32)
    ids = reader.held_out_indices()[: cfg.max_sequences or None]
    scores = score_heldout(head, target, reader, ids, cfg.anchor_stride, cfg.max_anchors_per_batch, progress=True)
    result = dict(head=str(cfg.head), causal_head=head.config.causal_head, sequences=len(ids), **scores,
                  anchor_stride=cfg.anchor_stride)
    if cfg.out:
        pathlib.Path(cfg.out).write_text(json.dumps(result, indent=1) + "\n")
    logger.info("eval %s: kl %.3f, accept_len %.2f, agree %s", cfg.head, result["kl_mean"], result["accept_len"],
                result["agree"])
    return result
