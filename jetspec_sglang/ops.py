"""The ONLY dispatcher between kernels/ (Triton) and the pure-PyTorch twins in tree.py, mask.py and verify.py.

Every per-round op of the worker and the reference engine is called through here, with `backend` =
JetSpecConfig.backend (JETSPEC_OPS_BACKEND): "auto" runs Triton on CUDA tensors when triton is installed and the
twin otherwise; "torch" always the twin; "triton" always Triton (CPU tensors only under TRITON_INTERPRET=1, i.e.
tests). Importing this module imports neither triton nor kernels/; the first Triton call does.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import NamedTuple

import torch

from jetspec_sglang import mask, tree, verify
from jetspec_sglang.config import BACKENDS
from jetspec_sglang.tree import DraftTree
from jetspec_sglang.verify import AcceptResult


class TreeMask(NamedTuple):
    """What the verify forward needs from a tree besides its tokens (sglang-integration.md 9.1, 9.3)."""

    mask_BNN: torch.Tensor  # bool; [b, i, j] = node j is node i or an ancestor of it; padding sees itself
    positions_BN: torch.Tensor  # int64; prefix length + depth
    retrieve_index_BN: torch.Tensor  # int64; b * N + i
    first_child_BN: torch.Tensor  # int64; smallest child index, mask.NO_LINK if none
    next_sibling_BN: torch.Tensor  # int64; next larger index with the same parent, mask.NO_LINK if none


def resolve_backend(t: torch.Tensor, backend: str = "auto") -> str:
    """"torch" or "triton" for an op on tensors like `t`; raises if "triton" is forced where it cannot run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not supported; set JETSPEC_OPS_BACKEND to one of {BACKENDS}")
    if backend == "torch":
        return "torch"
    has_triton = _has_triton()
    if backend == "auto":
        return "triton" if t.is_cuda and has_triton else "torch"
    if not has_triton:
        raise RuntimeError("JETSPEC_OPS_BACKEND=triton but triton is not installed; install triton or set "
                           "JETSPEC_OPS_BACKEND=auto (or torch)")
    if not t.is_cuda and not _interpreting():
        raise RuntimeError(f"JETSPEC_OPS_BACKEND=triton got tensors on {t.device}; Triton kernels run on CUDA "
                           "tensors, or on CPU only under the interpreter (export TRITON_INTERPRET=1 before triton "
                           "is imported; tests and benchmarks only). Set JETSPEC_OPS_BACKEND=auto or torch instead.")
    return "triton"


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def _interpreting() -> bool:
    """TRITON_INTERPRET as triton reads it (kernels are built for the interpreter when it is set at import)."""
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on")


def build_tree(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL=None,
               backend="auto", best_first=False) -> DraftTree:
    """`tree.build_tree` (same arguments, same trees as `tree.build_tree_ref`) or `kernels.tree_build`.

    best_first has no Triton kernel: it always runs `tree.build_tree` (on CUDA without a host read)."""
    tree.check_tree_inputs(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL)
    if best_first or resolve_backend(topk_logprobs_BLK, backend) == "torch":
        return tree.build_tree(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL, best_first)
    from jetspec_sglang.kernels.tree_build import tree_build

    caps = None if fanout_caps_BL is None else fanout_caps_BL.contiguous()
    return DraftTree(*tree_build(topk_tokens_BLK.contiguous(), topk_logprobs_BLK.contiguous(),
                                 root_tokens_B.contiguous(), budget, caps))


def build_tree_mask(parents_BN, depth_BN, prefix_lens_B, max_depth=None, backend="auto") -> TreeMask:
    """Ancestor mask, positions and retrieve links of a batch of trees: one launch on the Triton path.

    parents_BN / depth_BN int64 as in DraftTree; prefix_lens_B int32/int64 (S); max_depth as in
    `mask.build_ancestor_mask`. The twin is the three functions of mask.py.
    """
    if resolve_backend(parents_BN, backend) == "torch":
        return TreeMask(mask.build_ancestor_mask(parents_BN, max_depth), mask.tree_positions(depth_BN, prefix_lens_B),
                        *mask.build_retrieve_links(parents_BN))
    from jetspec_sglang.kernels.tree_mask import tree_mask

    return TreeMask(*tree_mask(parents_BN.contiguous(), depth_BN.contiguous(), prefix_lens_B.contiguous(),
                               max_depth))


def build_ancestor_mask(parents_BN, max_depth=None, backend="auto") -> torch.Tensor:
    """`mask.build_ancestor_mask` or the mask part of `kernels.tree_mask`: bool [B, N, N]."""
    if resolve_backend(parents_BN, backend) == "torch":
        return mask.build_ancestor_mask(parents_BN, max_depth)
    from jetspec_sglang.kernels.tree_mask import tree_mask

    return tree_mask(parents_BN.contiguous(), max_depth=max_depth, with_links=False)[0]


def build_retrieve_links(parents_BN, backend="auto") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`mask.build_retrieve_links` or the link part of `kernels.tree_mask`: (retrieve_index, first_child,
    next_sibling), int64 [B, N]."""
    if resolve_backend(parents_BN, backend) == "torch":
        return mask.build_retrieve_links(parents_BN)
    from jetspec_sglang.kernels.tree_mask import tree_mask

    return tree_mask(parents_BN.contiguous(), with_mask=False)[2:]


def build_verify_mask_full(mask_BNN, prefix_lens_B, total=None, backend="auto") -> torch.Tensor:
    """`mask.build_verify_mask_full` or `kernels.verify_mask`: SGLang's flat FULL mask, bool [total]."""
    if resolve_backend(mask_BNN, backend) == "torch":
        return mask.build_verify_mask_full(mask_BNN, prefix_lens_B, total)
    from jetspec_sglang.kernels.verify_mask import verify_mask

    return verify_mask(mask_BNN.contiguous(), prefix_lens_B.contiguous(), total)


def accept_greedy(tokens_BN, parents_BN, depth_BN, target_choice_BN, max_depth, backend="auto") -> AcceptResult:
    """`verify.accept_greedy` or `kernels.accept_greedy` (int64 inputs; trees no deeper than max_depth)."""
    if resolve_backend(tokens_BN, backend) == "torch":
        return verify.accept_greedy(tokens_BN, parents_BN, depth_BN, target_choice_BN, max_depth)
    from jetspec_sglang.kernels.accept_greedy import accept_greedy as accept_greedy_triton

    return AcceptResult(*accept_greedy_triton(tokens_BN.contiguous(), parents_BN.contiguous(), depth_BN.contiguous(),
                                              target_choice_BN.contiguous(), max_depth))
