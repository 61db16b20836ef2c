"""CPU stand-in for `sgl_kernel`, the compiled op library SGLang 0.5.23 imports when SGLANG_USE_CPU_ENGINE=1.

No CPU build of sgl-kernel is published (its CUDA wheel cannot load without libcuda), yet SGLang imports these
names at module load on CPU and calls some of them on the speculative path. Every op SGLang calls for plain
decoding and for JETSPEC is implemented here in torch with the semantics of SGLang's own Triton twin of the op
(tests/test_sgl_kernel_cpu.py compares each with that Triton kernel under TRITON_INTERPRET=1). Ops only other
speculative algorithms reach (EAGLE tree build, multi-layer EAGLE) raise NotImplementedError naming the op.
Inputs are read the way the GPU op reads them: the Triton kernels and the CUDA ops' TensorMatchers take raw
memory and ignore strides, so every tensor argument must be contiguous (and, where the CUDA op fixes them, of
its shape and dtype); `expect` raises instead of silently reading a strided view in logical order, so a caller
bug that would corrupt memory on the GPU fails on CPU too. Installed by jetspec-sglang's scripts/setup.sh on
CPU-only machines, never on GPU machines. Ledger: patches/README.md.
"""
from __future__ import annotations

import ctypes
import logging

import torch

from sgl_kernel import hash_ops as _hash_ops  # noqa: F401  (registers torch.ops.sgl_kernel.murmur_hash32_cpu)

__version__ = "0.0.0+jetspec.cpu"
logger = logging.getLogger(__name__)


def expect(op: str, name: str, tensor: torch.Tensor, shape=None, dtype=None) -> None:
    """Raise ValueError unless `tensor` is what the GPU op reads: contiguous memory (Triton and the CUDA
    TensorMatcher ignore strides), and the shape / dtype the CUDA op checks, when given."""
    if not tensor.is_contiguous():
        raise ValueError(f"sgl_kernel.{op}: {name} is not contiguous (shape {tuple(tensor.shape)}, stride "
                         f"{tensor.stride()}); the GPU op reads raw memory ignoring strides and would read the wrong "
                         f"elements - pass {name}.contiguous()")
    if shape is not None and tuple(tensor.shape) != tuple(int(d) for d in shape):
        raise ValueError(f"sgl_kernel.{op}: {name} has shape {tuple(tensor.shape)}, the GPU op expects "
                         f"{tuple(int(d) for d in shape)}")
    if dtype is not None and tensor.dtype != dtype:
        raise ValueError(f"sgl_kernel.{op}: {name} is {tensor.dtype}, the GPU op expects {dtype}")


def _contiguous(op: str, **tensors: torch.Tensor) -> None:
    for name, tensor in tensors.items():
        expect(op, name, tensor)


def copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc) -> None:
    """For every KV buffer (base address, row stride in bytes) copy row src_loc[i] to row tgt_loc[i].

    All source rows are read before any target row is written, so overlapping moves are safe.
    """
    _contiguous("copy_all_layer_kv_cache_cpu", data_ptrs=data_ptrs, strides=strides, tgt_loc=tgt_loc,
                src_loc=src_loc)
    if tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.int64)
    src = src_loc.to(torch.int64)
    moved = tgt != src  # rows already in place (an accepted path that is the window's prefix) need no copy
    if not bool(moved.all()):
        if not bool(moved.any()):
            return
        tgt, src = tgt[moved], src[moved]
    rows = int(max(int(tgt.max()), int(src.max()))) + 1
    for base, stride in zip(data_ptrs.tolist(), strides.tolist()):
        raw = (ctypes.c_uint8 * (rows * int(stride))).from_address(int(base))
        table = torch.frombuffer(raw, dtype=torch.uint8).view(rows, int(stride))
        table[tgt] = table[src]


def _segments(req_pool_indices, start_offset, end_offset):
    """(pool row, start, end, output offset) per request; offsets accumulate (end - start) in request order."""
    starts, ends = start_offset.tolist(), end_offset.tolist()
    out, offset = [], 0
    for row, start, end in zip(req_pool_indices.tolist(), starts, ends):
        out.append((int(row), int(start), int(end), offset))
        offset += int(end) - int(start)
    return out


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc,
                                 pool_len) -> None:
    """req_to_token[row, start:end] = out_cache_loc[offset : offset + end - start] for each request."""
    _contiguous("assign_req_to_token_pool_cpu", req_pool_indices=req_pool_indices, req_to_token=req_to_token,
                start_offset=start_offset, end_offset=end_offset, out_cache_loc=out_cache_loc)
    for row, start, end, offset in _segments(req_pool_indices, start_offset, end_offset):
        if end > start:
            req_to_token[row, start:end] = out_cache_loc[offset: offset + end - start].to(req_to_token.dtype)


def assign_extend_cache_locs_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc,
                                 pool_len) -> None:
    """out_cache_loc[offset : offset + end - start] = req_to_token[row, start:end] for each request."""
    _contiguous("assign_extend_cache_locs_cpu", req_pool_indices=req_pool_indices, req_to_token=req_to_token,
                start_offset=start_offset, end_offset=end_offset, out_cache_loc=out_cache_loc)
    for row, start, end, offset in _segments(req_pool_indices, start_offset, end_offset):
        if end > start:
            out_cache_loc[offset: offset + end - start] = req_to_token[row, start:end].to(out_cache_loc.dtype)


def assign_draft_cache_locs_contiguous_cpu(req_pool_indices, req_to_token, seq_lens, out_cache_loc, pool_len,
                                           topk, speculative_num_steps) -> None:
    """Copy topk * num_steps slots per request from req_to_token[row, seq_len:] into consecutive rows."""
    _contiguous("assign_draft_cache_locs_contiguous_cpu", req_pool_indices=req_pool_indices,
                req_to_token=req_to_token, seq_lens=seq_lens, out_cache_loc=out_cache_loc)
    width = int(topk) * int(speculative_num_steps)
    for i, (row, start) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        out_cache_loc[i * width: (i + 1) * width] = req_to_token[int(row), int(start): int(start) + width]


def fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, accept_out_cache_loc) -> None:
    """Pack out_cache_loc[accept_index] of the non-negative entries of accept_index (row-major) to the front."""
    _contiguous("fill_accept_out_cache_loc_cpu", accept_index=accept_index, out_cache_loc=out_cache_loc,
                accept_out_cache_loc=accept_out_cache_loc)
    flat = accept_index.view(-1).to(torch.int64)
    valid = flat[flat >= 0]
    accept_out_cache_loc[: valid.numel()] = out_cache_loc[valid].to(accept_out_cache_loc.dtype)


def fill_bonus_tokens_cpu(accept_tokens, accept_lens, bonus_tokens, accept_stride) -> None:
    """bonus_tokens[i] = accept_tokens[i * accept_stride + accept_lens[i] - 1]."""
    _contiguous("fill_bonus_tokens_cpu", accept_tokens=accept_tokens, accept_lens=accept_lens,
                bonus_tokens=bonus_tokens)
    idx = torch.arange(accept_lens.numel(), dtype=torch.int64) * int(accept_stride) + accept_lens.to(torch.int64) - 1
    bonus_tokens.copy_(accept_tokens.reshape(-1)[idx].to(bonus_tokens.dtype))


def verify_tree_greedy_cpu(predicts, accept_index, accept_token_num, candidates, retrive_index, retrive_next_token,
                           retrive_next_sibling, target_predict) -> None:
    """Greedy tree walk: from the root, follow the first child (then its siblings, in link order) whose token
    equals the target's choice at the current node; record the accepted nodes' flat ids in accept_index, the
    target's token at every accepted node in predicts (flat node ids), and the count of accepted drafts.
    Same semantics as SGLang's verify_tree_greedy kernels (sglang/kernels/ops/speculative/spec_tree.py).
    """
    op = "verify_tree_greedy_cpu"  # the CUDA op's TensorMatchers (sglang/kernels/jit/csrc/speculative/tree.cuh)
    bs, n = candidates.shape
    steps = accept_index.shape[1]
    for name, t in dict(candidates=candidates, retrive_index=retrive_index, retrive_next_token=retrive_next_token,
                        retrive_next_sibling=retrive_next_sibling, target_predict=target_predict).items():
        expect(op, name, t, (bs, n), torch.int64)
    expect(op, "accept_index", accept_index, (bs, steps), torch.int32)
    expect(op, "accept_token_num", accept_token_num, (bs,), torch.int32)
    expect(op, "predicts", predicts, (bs * n,), torch.int32)
    cand = candidates.tolist()
    index = retrive_index.tolist()
    next_token = retrive_next_token.tolist()
    next_sibling = retrive_next_sibling.tolist()
    target = target_predict.reshape(bs, n).tolist()
    for b in range(bs):
        last = index[b][0]
        accept_index[b, 0] = last
        accepted, cur = 0, 0
        for j in range(1, steps):
            cur = next_token[b][cur]
            want = target[last // n][last % n]
            while cur != -1 and cand[b][cur] != want:
                cur = next_sibling[b][cur]
            if cur == -1:
                break
            predicts[last] = want
            accepted += 1
            accept_index[b, accepted] = index[b][cur]
            last = index[b][cur]
        accept_token_num[b] = accepted
        predicts[last] = target[last // n][last % n]


def _unsupported(name: str, why: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} has no CPU implementation in jetspec-sglang's stand-in ({why}). "
            "On CPU, serve plain decoding or --speculative-algorithm JETSPEC; other speculative algorithms need a "
            "GPU or a source build of sgl-kernel's CPU library."
        )

    op.__name__ = name
    return op


build_tree_kernel_efficient_cpu = _unsupported("build_tree_kernel_efficient_cpu", "EAGLE tree construction")
rotate_input_ids_cpu = _unsupported("rotate_input_ids_cpu", "multi-layer EAGLE")


def __getattr__(name: str):
    """Names SGLang imports from sgl_kernel on code paths this stand-in does not serve (other models, other
    platforms): importing works, calling raises NotImplementedError naming the op."""
    if name.startswith("__"):
        raise AttributeError(name)
    logger.debug("sgl_kernel stand-in: resolved unsupported op %s", name)
    return _unsupported(name, "not on the plain or JETSPEC CPU path")
