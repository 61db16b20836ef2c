"""Triton greedy tree acceptance: walk down from the root along the first child whose token is the target's choice.

Twin: `jetspec_sglang.verify.accept_greedy` (jetspec-method.md 6.1; words as defined in verify.py). Imports only
torch and triton (kernels/ depends on nothing in the package).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

PAD_NODE = -1  # == jetspec_sglang.verify.PAD_NODE
PAD_TOKEN = -1  # == jetspec_sglang.verify.PAD_TOKEN
MAX_NODES = 1024  # largest tree SGLang's tree helpers accept (draft_token_num <= 1024)
_PAD_NODE = tl.constexpr(PAD_NODE)  # kernels read module globals only as constexpr
_PAD_TOKEN = tl.constexpr(PAD_TOKEN)


@triton.jit
def _accept_greedy_kernel(
    tokens_ptr,  # [B, N] int64; draft tokens, node 0 = root
    parents_ptr,  # [B, N] int64; NO_PARENT=-1 at root and padding
    choice_ptr,  # [B, N] int64; the target's token at every node
    path_ptr,  # out [B, P] int64; accepted nodes root first, PAD_NODE after the accept length
    accept_lens_ptr,  # out [B] int64; accepted + 1
    bonus_ptr,  # out [B] int64
    emitted_ptr,  # out [B, P] int64; accepted draft tokens then the bonus, PAD_TOKEN after
    N,
    P,  # max_depth + 1
    BLOCK_N: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    # One program per request. Each step is one masked min over the nodes: the first child of `cur` whose token
    # equals the target's choice at `cur` (so later duplicate siblings never win, like the twin).
    b = tl.program_id(0).to(tl.int64)
    idx_N = tl.arange(0, BLOCK_N)
    parent_N = tl.load(parents_ptr + b * N + idx_N, mask=idx_N < N, other=-1).to(tl.int32)
    token_N = tl.load(tokens_ptr + b * N + idx_N, mask=idx_N < N, other=0)
    p_P = tl.arange(0, BLOCK_P)
    path_P = tl.where(p_P == 0, 0, _PAD_NODE)
    emitted_P = tl.full([BLOCK_P], _PAD_TOKEN, tl.int64)
    cur = 0
    accepted = 0
    choice = tl.load(choice_ptr + b * N)
    nxt = tl.min(tl.where((parent_N == cur) & (token_N == choice), idx_N, BLOCK_N), 0)
    while (nxt < N) & (accepted < P - 1):
        accepted += 1
        path_P = tl.where(p_P == accepted, nxt, path_P)
        emitted_P = tl.where(p_P == accepted - 1, choice, emitted_P)  # the child's token is the choice
        cur = nxt
        choice = tl.load(choice_ptr + b * N + cur)
        nxt = tl.min(tl.where((parent_N == cur) & (token_N == choice), idx_N, BLOCK_N), 0)
    emitted_P = tl.where(p_P == accepted, choice, emitted_P)  # the bonus
    keep_P = p_P < P
    tl.store(path_ptr + b * P + p_P, path_P.to(tl.int64), mask=keep_P)
    tl.store(emitted_ptr + b * P + p_P, emitted_P, mask=keep_P)
    tl.store(accept_lens_ptr + b, accepted + 1)
    tl.store(bonus_ptr + b, choice)


def accept_greedy(
    tokens_BN: torch.Tensor,
    parents_BN: torch.Tensor,
    depth_BN: torch.Tensor,
    target_choice_BN: torch.Tensor,
    max_depth: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(path_BP, accept_lens_B, bonus_B, tokens_BP), all int64 with P = max_depth + 1: the fields of AcceptResult.

    Equal to the twin on trees whose depth is at most max_depth (every DraftTree); depth_BN is checked for shape
    but not read (the walk counts the depth). Tree root 0, children of 0: tokens [r, 5, 7], choice at 0 is 7 ->
    path [0, 2, -1], accept length 2, bonus = choice at node 2, emitted [7, bonus, -1].
    """
    if tokens_BN.dim() != 2:
        raise ValueError(f"tokens_BN must be [B, N], got shape {tuple(tokens_BN.shape)}")
    B, N = tokens_BN.shape
    if not 1 <= N <= MAX_NODES:
        raise ValueError(f"N={N} tree nodes must be in [1, {MAX_NODES}]")
    if not isinstance(max_depth, int) or max_depth < 0:
        raise ValueError(f"max_depth={max_depth!r} must be an int >= 0 (the deepest level a tree may have, L)")
    for name, t in (("tokens_BN", tokens_BN), ("parents_BN", parents_BN), ("depth_BN", depth_BN),
                    ("target_choice_BN", target_choice_BN)):
        if t.shape != (B, N) or t.dtype != torch.int64:
            raise ValueError(f"{name} is {t.dtype} {tuple(t.shape)}; expected torch.int64 ({B}, {N})")
        if t.device != tokens_BN.device:
            raise ValueError(f"{name} is on {t.device}, tokens_BN on {tokens_BN.device}; use one device")
        if not t.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    P = max_depth + 1
    device = tokens_BN.device
    path_BP = torch.empty(B, P, dtype=torch.int64, device=device)
    accept_lens_B = torch.empty(B, dtype=torch.int64, device=device)
    bonus_B = torch.empty(B, dtype=torch.int64, device=device)
    emitted_BP = torch.empty(B, P, dtype=torch.int64, device=device)
    if B > 0:
        BLOCK_N = triton.next_power_of_2(N)
        _accept_greedy_kernel[(B,)](
            tokens_BN, parents_BN, target_choice_BN, path_BP, accept_lens_B, bonus_B, emitted_BP, N, P,
            BLOCK_N=BLOCK_N, BLOCK_P=triton.next_power_of_2(P), num_warps=max(1, BLOCK_N // 256),
        )
    return path_BP, accept_lens_B, bonus_B, emitted_BP
