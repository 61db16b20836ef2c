"""HF-transformers reference engine: batch-1 JetSpec tree / chain / plain decoding on CPU or GPU; the oracle
for tests and the demo (`python -m jetspec_sglang.generate`). No sglang or triton import.

    engine.py       ReferenceEngine.generate -> GenerationResult (tokens, text, finish reason, metrics)
    spec_round.py   one round: draft -> tree -> verify -> accept -> commit; DecodeState and its invariant
    tree_verify.py  the target forward over all tree nodes (4-D tree mask, positions past_len + depth, taps)
    kv_cache.py     KV compaction of the HF DynamicCache (prefix + accepted path)
    sampling.py     SamplingParams and the single-token choice
    stopping.py     EOS / stop strings / max tokens
    metrics.py      per-request metrics
    loading.py      target / head / prompt loading for the CLI
"""
from jetspec_sglang.reference.engine import MODES, GenerationResult, ReferenceEngine
from jetspec_sglang.reference.kv_cache import compact_kv_cache
from jetspec_sglang.reference.sampling import SamplingParams
from jetspec_sglang.reference.stopping import FINISH_EOS, FINISH_LENGTH, FINISH_STOP
from jetspec_sglang.reference.tree_verify import tree_attention_mask, verify_tree

__all__ = ["MODES", "FINISH_EOS", "FINISH_LENGTH", "FINISH_STOP", "GenerationResult", "ReferenceEngine",
           "SamplingParams", "compact_kv_cache", "tree_attention_mask", "verify_tree"]
