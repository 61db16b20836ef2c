"""Draft-head distillation (jetspec-method.md 8): target-aligned data, a one-time target cache, the forward-KL loss,
the training loop and its CLI (`python -m jetspec_sglang.train {regenerate, cache, fit, eval}`).

One concept per file: decode (batched target decoding), regenerate (responses.jsonl), cache (taps + top-K teacher
on disk), blocks (anchors, block inputs, mask, teacher alignment), loss (forward KL, reference + fused), step (one
forward), loop (optimiser, checkpoints, resume), curves (PNG), evaluate (held-out agreement). Imports no sglang;
importing this package loads nothing heavy.
"""
