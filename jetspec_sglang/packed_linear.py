"""Pre-packed CPU linear weights: oneDNN's blocked layout, computed once instead of on every product.

On a CPU without AMX (this project's: AVX-512 bf16), `F.linear` / `torch.matmul` with a plain bf16 weight re-lay
the whole weight into oneDNN's blocked format on every call; for decode-sized products (1-16 rows) that reorder
costs more than the product. `pack_weight` does it once; `packed_linear` then runs the same oneDNN kernel, so its
output is bit-identical to `F.linear(x, weight, bias)` (tests/test_packed_linear.py checks it, every row count).
Measured here, SmolLM2-135M shapes (30 layers' four products + the LM head, weights cold): 22.1 -> 14.3 ms at
1 row, 27.1 -> 17.7 ms at 8 rows, 38.1 -> 20.6 ms at 16 rows.
Only bf16 is packed: oneDNN's packed fp32 kernel rounds differently from F.linear (and fp32 is what the token-exact
comparisons with plain decoding run in); fp16 was never checked. Pure torch; the SGLang side
(which layers, when, the hooks) is glue/cpu_packed.py.
"""
from __future__ import annotations

import torch

# oneDNN picks its blocking for an expected row count; decode products have few rows (measured: hints 1-32 give
# the same times within noise for 1-128 rows).
ROWS_HINT = 1


def packable_dtype(dtype: torch.dtype) -> bool:
    """Whether a weight of `dtype` is packed: bf16 where this torch/oneDNN build has a bf16 path. (fp16 has an
    oneDNN path on CPUs with AVX512-FP16/AVX-NE-CONVERT, but its bit-identity with F.linear was never checked: no
    such CPU here, so it is not packed.)"""
    return (dtype == torch.bfloat16 and torch.backends.mkldnn.is_available()
            and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))


def pack_weight(weight_OI: torch.Tensor) -> torch.Tensor:
    """The oneDNN-blocked copy of a linear weight [O, I] (an opaque mkldnn tensor of the same dtype and numel)."""
    if weight_OI.dim() != 2 or weight_OI.device.type != "cpu" or not packable_dtype(weight_OI.dtype):
        raise ValueError(f"pack_weight: a 2-D CPU weight of a packable dtype is needed, got shape "
                         f"{tuple(weight_OI.shape)} {weight_OI.dtype} on {weight_OI.device} (packable here: "
                         f"{[d for d in (torch.bfloat16,) if packable_dtype(d)]})")
    return torch.ops.mkldnn._reorder_linear_weight(weight_OI.detach().contiguous(), ROWS_HINT)


def packed_linear(x_TI: torch.Tensor, packed_OI: torch.Tensor, bias_O: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear(x, weight, bias) through the packed weight: [..., I] -> [..., O], bit-identical, same dtype."""
    return torch.ops.mkldnn._linear_pointwise(x_TI, packed_OI, bias_O, "none", [], "")


def packed_bytes(weight_OI: torch.Tensor) -> int:
    """Memory a packed copy of `weight_OI` takes (the plain weight stays: other code reads it)."""
    return weight_OI.numel() * weight_OI.element_size()
