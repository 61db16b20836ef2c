"""jetspec-sglang: JetSpec speculative decoding (parallel tree drafting, arXiv 2606.18394) for SGLang 0.5.23.

The package root is a pure library (no sglang, no triton import, no side effects). SGLang enters only through
`jetspec_sglang.glue`, loaded by SGLang's plugin entry point.

Dimension key (tensor-name suffixes everywhere in this package):
    B  requests in a batch            N  tree nodes per request, root included (the budget)
    L  draft depth (block = L + 1)     K  per-depth top-k width of the tree
    T  tokens flattened over a batch   S  prefix / KV length
    V  vocabulary                      M  hidden size
    H  query heads                     G  key/value heads
    E  head dim
"""

__version__ = "0.1.0"
