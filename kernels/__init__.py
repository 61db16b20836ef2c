"""Triton kernels of the per-round tree work, installed as `jetspec_sglang.kernels` (never import `kernels`).

One op per module, each a `_op_kernel` plus its checking launcher: tree_build, tree_mask, verify_mask,
accept_greedy. Reached through `jetspec_sglang.ops`, which holds the PyTorch twins' dispatch. Depends on nothing
else in the package; importing this package imports no submodule (and so no triton).
"""
