"""torch.ops.sgl_kernel.murmur_hash32_cpu: SGLang's seeded-sampling hash on CPU (a `sampling_seed` request).

Same bits as SGLang's Triton `murmur_hash32_kernel` (sglang/kernels/ops/sampling/murmur_hash.py): MurmurHash3
over four 32-bit blocks (seed low, seed high, position, column). uint32 arithmetic is done in int64 with
explicit masking; 32x32-bit products are split so they never overflow int64.
"""
import torch

_MASK = 0xFFFFFFFF


def _mul32(a: torch.Tensor, b: int) -> torch.Tensor:
    """(a * b) mod 2^32 for a in [0, 2^32), without int64 overflow."""
    lo = (a & 0xFFFF) * b
    hi = ((a >> 16) * b) & 0xFFFF
    return (lo + (hi << 16)) & _MASK


def _rotl32(x: torch.Tensor, r: int) -> torch.Tensor:
    return ((x << r) | (x >> (32 - r))) & _MASK


def _mix(h: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    k = _rotl32(_mul32(k, 0xCC9E2D51), 15)
    k = _mul32(k, 0x1B873593)
    h = _rotl32(h ^ k, 13)
    return (_mul32(h, 5) + 0xE6546B64) & _MASK


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def murmur_hash32_reference(seed: torch.Tensor, positions: torch.Tensor, col_indices: torch.Tensor) -> torch.Tensor:
    """[n] seeds (uint64/int64), [n] positions, [m] columns -> [n, m] uint32 hashes."""
    s = seed.to(torch.int64)[:, None]
    pos = (positions.to(torch.int64) & _MASK)[:, None]
    col = (col_indices.to(torch.int64) & _MASK)[None, :]
    h = torch.zeros(s.shape[0], col.shape[1], dtype=torch.int64)
    h = _mix(h, (s & _MASK).expand_as(h))
    h = _mix(h, ((s >> 32) & _MASK).expand_as(h))
    h = _mix(h, pos.expand_as(h))
    h = _mix(h, col.expand_as(h))
    h = _fmix32(h ^ 16)
    return h.to(torch.uint32)


_LIB = torch.library.Library("sgl_kernel", "FRAGMENT")
try:
    _LIB.define("murmur_hash32_cpu(Tensor seed, Tensor positions, Tensor col_indices) -> Tensor")
    _LIB.impl("murmur_hash32_cpu", murmur_hash32_reference, "CPU")
except RuntimeError:  # already defined by a real CPU build of sgl-kernel loaded first
    pass
