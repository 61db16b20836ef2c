"""What `fit` (from the cache) and `online` (against the live target) share: the head's geometry, the optimiser
and its schedule. A frozen keyword-only dataclass; each trainer's config extends it with its own inputs and its own
defaults. Imports no sglang.
"""
from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True, kw_only=True)
class HeadRecipe:
    head_type: str = "causal"  # "causal" (JetSpec, block-causal) | "bidirectional" (DFlash)
    num_layers: int = 2
    intermediate_size: int = 1536
    num_heads: int = 9
    num_kv_heads: int = 3
    head_dim: int = 64
    block_size: int = 16
    mask_token_id: int = 3
    steps: int = 1000
    seqs_per_step: int = 8
    anchors_per_seq: int = 64
    lr: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    depth_decay: float | None = None  # gamma of w_k = exp(-(k-1)/gamma); None = uniform (the JetSpec default)
    hard_mix: float = 0.0  # teacher (1 - x) p + x onehot(argmax p): weight of the target's greedy token (loss.py)
    seed: int = 0
    init: str = "target-layers"  # "target-layers" (init_head.py) | "random" (init_draft_head)
    init_from: str = ""  # a head folder to start from (its geometry wins, `init` is unused; online: its
    # training_state.json continues the step count)
    grow_layers: int = 0  # with init_from: append this many decoder layers that start as the identity
    # (init_head.grow_head), so the grown head computes exactly what the init_from head did at step 0

    def __post_init__(self) -> None:
        if self.head_type not in ("causal", "bidirectional"):
            raise ValueError(f"--head-type {self.head_type!r}: choose causal or bidirectional")
        if self.init not in ("target-layers", "random"):
            raise ValueError(f"--init {self.init!r}: choose target-layers or random")
        if self.grow_layers < 0 or (self.grow_layers and not self.init_from):
            raise ValueError(f"--grow-layers {self.grow_layers}: needs --init-from (the head to grow) and a count >= 0")
        if not 0.0 <= self.hard_mix < 1.0:
            raise ValueError(f"--hard-mix {self.hard_mix}: must be in [0, 1) (0 = plain distillation)")
        if self.steps <= 0 or self.seqs_per_step <= 0 or self.anchors_per_seq <= 0:
            raise ValueError(f"--steps {self.steps} / --seqs-per-step {self.seqs_per_step} / --anchors-per-seq "
                             f"{self.anchors_per_seq} must be positive")


def scheduled_lr(recipe: HeadRecipe, step: int, progress: float) -> float:
    """Linear warm-up over warmup_steps, then cosine from lr to min_lr_ratio * lr as progress goes 0 -> 1.

    Example (lr 1e-3, warm-up 10, min ratio 0.1): step 4 -> 5e-4; progress 0 -> 1e-3, 0.5 -> 5.5e-4, 1 -> 1e-4.
    """
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return recipe.lr * (recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * cos)
