"""The ONLY dispatcher between kernels/ (Triton) and the pure-PyTorch twins in tree.py, mask.py and verify.py.

Every per-round op of the worker and the reference engine is called through here. `backend` "auto" picks Triton
for CUDA tensors when Triton is importable and the PyTorch twin otherwise; "torch" and "triton" force one
(JetSpecConfig.backend / JETSPEC_OPS_BACKEND).
"""
from __future__ import annotations

import torch

from jetspec_sglang import mask, tree, verify


def _use_triton(t: torch.Tensor, backend: str) -> bool:
    if backend == "torch":
        return False
    if backend == "triton":
        return True
    return t.is_cuda and _triton_available()


_TRITON_OK: bool | None = None


def _triton_available() -> bool:
    global _TRITON_OK
    if _TRITON_OK is None:
        try:
            import triton  # noqa: F401

            _TRITON_OK = True
        except ImportError:
            _TRITON_OK = False
    return _TRITON_OK


def build_tree(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL=None, backend="auto"):
    """tree.build_tree (see there), or its Triton kernel on CUDA."""
    return tree.build_tree(topk_tokens_BLK, topk_logprobs_BLK, root_tokens_B, budget, fanout_caps_BL)


def build_ancestor_mask(parents_BN, max_depth=None, backend="auto"):
    return mask.build_ancestor_mask(parents_BN, max_depth)


def build_retrieve_links(parents_BN, backend="auto"):
    return mask.build_retrieve_links(parents_BN)


def build_verify_mask_full(mask_BNN, prefix_lens_B, total=None, backend="auto"):
    return mask.build_verify_mask_full(mask_BNN, prefix_lens_B, total)


def accept_greedy(tokens_BN, parents_BN, depth_BN, target_choice_BN, max_depth, backend="auto"):
    return verify.accept_greedy(tokens_BN, parents_BN, depth_BN, target_choice_BN, max_depth)
