"""Target taps: the outputs of selected target decoder layers, concatenated in config order (jetspec-method.md 2.2).

Forward hooks on `model.layers[L]` (as JetSpec's `jetspec/core/model_runner.py` does) rather than HF
`output_hidden_states`, whose last entry is the final-normed state in transformers 5: the tap of the final layer
must be its pre-norm output. Used by the reference engine and the trainer. No sglang import.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of an HF causal LM (Llama, Qwen3, ...) or of its inner base model."""
    for owner in (getattr(model, "model", None), model):
        layers = getattr(owner, "layers", None)
        if isinstance(layers, nn.ModuleList):
            return layers
    get_decoder = getattr(model, "get_decoder", None)
    layers = getattr(get_decoder(), "layers", None) if callable(get_decoder) else None
    if isinstance(layers, nn.ModuleList):
        return layers
    raise TypeError(f"decoder_layers: {type(model).__name__} has no `.model.layers` / `.layers` ModuleList; "
                    f"pass an HF decoder-only causal LM (Llama, Qwen3, ...)")


class TargetTaps:
    """Context manager that records the outputs of `layer_ids` during every forward of `model`.

    with TargetTaps(model, [1, 9]) as taps:
        out = model(input_ids_BT)
        taps_BTF = taps.pop()          # [B, T, 2 * hidden], layer 1 then layer 9
    """

    def __init__(self, model: nn.Module, layer_ids: Sequence[int]) -> None:
        self.layers = decoder_layers(model)
        self.layer_ids = [int(i) for i in layer_ids]
        bad = [i for i in self.layer_ids if not 0 <= i < len(self.layers)]
        if not self.layer_ids or bad:
            raise ValueError(f"TargetTaps: layer_ids {self.layer_ids} must be non-empty and inside the target's "
                             f"{len(self.layers)} layers [0, {len(self.layers)}); bad ids {bad}")
        self._outputs: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, layer_id: int):
        def record(module: nn.Module, args: Any, output: Any) -> None:
            hidden = output[0] if isinstance(output, (tuple, list)) else output  # transformers 4.x returns a tuple
            if layer_id in self._outputs:
                raise RuntimeError(f"TargetTaps: layer {layer_id} ran twice before pop(); call pop() after each "
                                   f"forward")
            self._outputs[layer_id] = hidden
        return record

    def __enter__(self) -> TargetTaps:
        self._outputs.clear()
        self._handles = [self.layers[i].register_forward_hook(self._hook(i)) for i in sorted(set(self.layer_ids))]
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._outputs.clear()

    def pop(self) -> torch.Tensor:
        """taps_BTF of the last forward: the recorded layer outputs concatenated in `layer_ids` order."""
        missing = [i for i in self.layer_ids if i not in self._outputs]
        if missing:
            raise RuntimeError(f"TargetTaps.pop: no output recorded for layers {missing}; run the model forward "
                               f"inside the `with` block first")
        taps_BTF = torch.cat([self._outputs[i] for i in self.layer_ids], dim=-1)
        self._outputs.clear()
        return taps_BTF


def forward_with_taps(model: nn.Module, layer_ids: Sequence[int], input_ids_BT: torch.Tensor | None = None,
                      **forward_kwargs: Any) -> tuple[Any, torch.Tensor]:
    """Run `model(input_ids_BT, **forward_kwargs)` once; return (its output, taps_BTF).

    forward_kwargs pass through unchanged (past_key_values, attention_mask, position_ids, use_cache, ...), so
    the logits, the KV cache and the taps come from the same forward. taps_BTF: [B, T, len(layer_ids) * hidden],
    target dtype, pre-final-norm for every layer.
    """
    with TargetTaps(model, layer_ids) as taps:
        output = model(input_ids_BT, **forward_kwargs) if input_ids_BT is not None else model(**forward_kwargs)
        return output, taps.pop()


def taps_from_hidden_states(hidden_states: Sequence[torch.Tensor], layer_ids: Sequence[int]) -> torch.Tensor:
    """taps_BTF from HF `output_hidden_states` (index 0 = embeddings, layer L = index L + 1).

    The final layer is refused: its entry is final-normed in some transformers versions; use forward_with_taps.
    """
    num_layers = len(hidden_states) - 1
    bad = [i for i in layer_ids if not 0 <= i < num_layers - 1]
    if bad:
        raise ValueError(f"taps_from_hidden_states: layer ids {bad} are the final layer or outside [0, "
                         f"{num_layers}); the final entry may be normed, use forward_with_taps (hooks) instead")
    return torch.cat([hidden_states[i + 1] for i in layer_ids], dim=-1)
