"""Shared set-up for the tests that import real SGLang: its Triton kernels under the interpreter, tiny JetSpec
head checkpoints, random trees, and a TARGET_VERIFY attention forward built from real SGLang objects.

Triton picks interpreter or compiler when a `@triton.jit` function is *defined*, i.e. when its module is first
imported -- triton's own `tl.sum`/`tl.cdiv` included, so the interpreter works only if `triton` itself was first
imported with TRITON_INTERPRET=1. `import_interpreted` therefore sets the variable around that one import (triton
and SGLang are imported inside it; the variable is removed afterwards), when triton is not imported yet, and
`all_interpreted` reports whether the kernels really came out interpreted. They do not in a full-suite run (transformers imports triton
first) or on a CUDA machine: tests then skip their in-process cases and rerun the file in a subprocess with
TRITON_INTERPRET=1 (`rerun_under_interpreter`), as tests/test_kernels.py does.
"""
from __future__ import annotations

import importlib
import math
import os
import pathlib
import subprocess
import sys
import types

import torch

from jetspec_sglang.tree import NO_PARENT

ROOT = pathlib.Path(__file__).resolve().parents[1]
CHILD_ENV = "JETSPEC_SGLANG_TEST_CHILD"  # set in the subprocesses of rerun_in_subprocess

# Every SGLang module whose Triton kernels a test in this folder compares against.
KERNEL_MODULES = (
    "sglang.srt.mem_cache.allocation",
    "sglang.kernels.ops.speculative.cache_locs",
    "sglang.kernels.ops.speculative.eagle",
    "sglang.kernels.ops.speculative.spec_tree",
    "sglang.kernels.ops.speculative.reconstruct_tree",
    "sglang.kernels.ops.sampling.murmur_hash",
    "sglang.kernels.ops.attention.extend_attention",
)


def import_interpreted() -> dict:
    """Import KERNEL_MODULES, with TRITON_INTERPRET=1 set during the import when that can still take effect
    (triton not imported yet, no CUDA); name -> module."""
    set_here = "triton" not in sys.modules and "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available()
    if set_here:
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        return {name: importlib.import_module(name) for name in KERNEL_MODULES}
    finally:
        if set_here:
            del os.environ["TRITON_INTERPRET"]


def all_interpreted(*kernels) -> bool:
    """True when every kernel, and triton's own jitted language functions they call, run in the interpreter."""
    import triton.language.standard as tl_standard
    from triton.runtime.interpreter import InterpretedFunction

    return all(isinstance(k, InterpretedFunction) for k in (*kernels, tl_standard.sum, tl_standard.cdiv))


def rerun_under_interpreter(test_file: str, select: str) -> None:
    """Run `pytest test_file -k select` in a subprocess with TRITON_INTERPRET=1; fail with its output tail."""
    rerun_in_subprocess(test_file, select, TRITON_INTERPRET="1")


def rerun_in_subprocess(test_file: str, select: str, **env_vars: str) -> None:
    """Run `pytest test_file -k select` in a subprocess with extra environment variables (and CHILD_ENV=1); fail
    with its output tail unless every selected case passed."""
    env = dict(os.environ, **env_vars, **{CHILD_ENV: "1"})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test_file, "-k", select]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"subprocess run ({env_vars}) failed:\n{tail}"
    assert " passed" in tail and " skipped" not in tail, f"subprocess run ({env_vars}) skipped cases:\n{tail}"


# ---------------------------------------------------------------- heads


def target_config():
    """HF config of the tiny Qwen3 target (built once into the shared cache folder)."""
    from transformers import AutoConfig

    from jetspec_sglang.models import prepare_model

    return AutoConfig.from_pretrained(prepare_model("tiny-qwen3"))


def make_head(path, *, block_size: int = 4, causal_head: bool = True, num_layers: int = 1) -> pathlib.Path:
    """A tiny random JetSpec head (official DFlash layout) for the tiny Qwen3 target, saved at `path`."""
    from jetspec_sglang.draft_head import init_draft_head, save_draft_head
    from jetspec_sglang.draft_head_config import make_draft_head_config

    config = make_draft_head_config(target_config(), mask_token_id=3, num_layers=num_layers, block_size=block_size,
                                    causal_head=causal_head)
    save_draft_head(init_draft_head(config), path)
    return pathlib.Path(path)


# ---------------------------------------------------------------- trees


def random_parents(B: int, N: int, gen: torch.Generator) -> torch.Tensor:
    """parents_BN: int64, parents[i] ~ U[0, i), NO_PARENT at the root (node 0)."""
    parents = (torch.rand(B, N, generator=gen) * torch.arange(N)).floor().long()
    parents[:, 0] = NO_PARENT
    return parents


def choices_along_paths(tokens_BN: torch.Tensor, parents_BN: torch.Tensor, gen: torch.Generator, V: int,
                        follow: float = 0.8) -> torch.Tensor:
    """Target choice per node: with probability `follow` the token of a random child (so matches run deep into
    the tree), otherwise a random token (usually a mismatch)."""
    B, N = tokens_BN.shape
    choice = torch.randint(0, V, (B, N), generator=gen)
    for b in range(B):
        for i in range(N):
            children = (parents_BN[b] == i).nonzero().flatten()
            if len(children) and float(torch.rand(1, generator=gen)) < follow:
                pick = children[int(torch.randint(0, len(children), (1,), generator=gen))]
                choice[b, i] = tokens_BN[b, pick]
    return choice


# ---------------------------------------------------------------- a TARGET_VERIFY forward on real SGLang objects


class VerifyCase:
    """One TARGET_VERIFY attention forward on real SGLang objects: a RadixAttention layer, an MHATokenToKVPool and
    a ReqToTokenPool on CPU (random KV everywhere, distinct slots per request), a TorchNativeAttnBackend, and a
    ForwardBatch with an EagleVerifyInput (FULL custom tree mask from random parents when `tree`; with `compact`
    the EagleVerifyInput carries the same tree as the compact [bs, n, n] layout the worker passes on CPU, while
    `custom_mask` stays FULL for the Triton oracle).
    `naive_attention` is the float64 oracle of the mask contract (shared docs dflash-on-cpu.md Q2.4)."""

    POOL_SLOTS, POOL_ROWS, MAX_CONTEXT, LAYER_ID = 200, 5, 64, 1

    def __init__(self, prefix_lens, n, H=4, G=2, E=8, Ev=8, attn_type=None, window=-1, tree=False, seed=0,
                 compact=False):
        from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
        from sglang.srt.layers.radix_attention import AttentionType
        from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
        from sglang.srt.speculative.eagle_info import EagleVerifyInput

        from jetspec_sglang.mask import build_ancestor_mask, build_verify_mask_full

        gen = torch.Generator().manual_seed(seed)
        bs = len(prefix_lens)
        self.n, self.H, self.G, self.E, self.Ev = n, H, G, E, Ev
        self.prefix = torch.tensor(prefix_lens, dtype=torch.int64)
        self.layer = self.make_layer(attn_type or AttentionType.DECODER, window)
        self.kv_pool = MHATokenToKVPool(self.POOL_SLOTS, 1, torch.float32, G, E, 2, "cpu", False, v_head_dim=Ev)
        for buf in (*self.kv_pool.k_buffer, *self.kv_pool.v_buffer):  # garbage everywhere: unread slots must not leak
            buf.copy_(torch.randn(buf.shape, generator=gen))
        self.r2t = ReqToTokenPool(self.POOL_ROWS, self.MAX_CONTEXT, "cpu", False)
        self.rows = torch.randperm(self.POOL_ROWS, generator=gen)[:bs].to(torch.int64)
        free = torch.randperm(self.POOL_SLOTS, generator=gen) + 1  # slot 0 is SGLang's padding slot
        self.slots, used = [], 0
        for row, s in zip(self.rows.tolist(), prefix_lens):
            slots = free[used: used + s + n]
            used += s + n
            self.r2t.req_to_token[row, : s + n] = slots.to(torch.int32)
            self.slots.append(slots)
        self.out_cache_loc = torch.cat([sl[s:] for sl, s in zip(self.slots, prefix_lens)])
        T = bs * n
        self.q = torch.randn(T, H * E, generator=gen)
        self.k = torch.randn(T, G, E, generator=gen)
        self.v = torch.randn(T, G, Ev, generator=gen)
        self.custom_mask, self.tree_BNN = None, None
        if tree:
            self.tree_BNN = build_ancestor_mask(random_parents(bs, n, gen))
            self.custom_mask = build_verify_mask_full(self.tree_BNN, self.prefix)
            offset = 0  # prefix columns are visible whatever the buffer says (the contract; Triton skips them)
            for s in prefix_lens:
                block = self.custom_mask[offset: offset + n * (s + n)].view(n, s + n)
                block[:, :s] = torch.rand(n, s, generator=gen) < 0.5
                offset += n * (s + n)
        passed_mask = self.tree_BNN.reshape(-1) if compact else self.custom_mask
        self.spec_info = EagleVerifyInput(
            draft_token=None, custom_mask=passed_mask, positions=None, retrieve_index=None,
            retrieve_next_token=None, retrieve_next_sibling=None, retrieve_cum_len=None, spec_steps=n - 1, topk=-1,
            draft_token_num=n, capture_hidden_mode=None, seq_lens_sum=int(self.prefix.sum()), seq_lens_cpu=None)
        self.backend = TorchNativeAttnBackend(types.SimpleNamespace(
            device="cpu", req_to_token_pool=self.r2t, token_to_kv_pool=self.kv_pool))

    def make_layer(self, attn_type, window=-1, **kwargs):
        from sglang.srt.layers.radix_attention import RadixAttention

        return RadixAttention(self.H, self.E, self.E ** -0.5, self.G, layer_id=self.LAYER_ID, v_head_dim=self.Ev,
                              sliding_window_size=window, attn_type=attn_type, **kwargs)

    def forward_batch(self, mode=None):
        """TARGET_VERIFY by default; EXTEND also carries the extend fields of a plain prefill of the n rows."""
        from sglang.srt.model_executor.forward_batch_info import ForwardBatch, ForwardMode

        mode = mode or ForwardMode.TARGET_VERIFY
        bs, n = len(self.rows), self.n
        fields = dict(forward_mode=mode, batch_size=bs, input_ids=torch.zeros(bs * n, dtype=torch.int64),
                      req_pool_indices=self.rows, seq_lens=self.prefix.clone(), out_cache_loc=self.out_cache_loc,
                      seq_lens_sum=int(self.prefix.sum()), spec_info=self.spec_info)
        if mode == ForwardMode.EXTEND:
            fields.update(seq_lens=self.prefix + n, seq_lens_sum=int(self.prefix.sum()) + bs * n, spec_info=None,
                          extend_prefix_lens=self.prefix.clone(), extend_seq_lens=torch.full((bs,), n),
                          extend_seq_lens_cpu=[n] * bs, extend_prefix_lens_cpu=self.prefix.tolist())
        return ForwardBatch(**fields)

    def visible(self, b: int, causal: bool, window: int, use_tree: bool = True) -> torch.Tensor:
        """bool [n, S_b + n] of the contract, built element by element, independently of the glue."""
        s, n = int(self.prefix[b]), self.n
        visible = torch.zeros(n, s + n, dtype=torch.bool)
        for i in range(n):
            for j in range(s + n):
                if j < s:
                    ok = True
                elif use_tree and self.tree_BNN is not None:
                    ok = bool(self.tree_BNN[b, i, j - s])
                else:
                    ok = (j - s <= i) if causal else True
                if window > -1 and causal and j < s + i - window:
                    ok = False
                visible[i, j] = ok
        return visible

    def naive_attention(self, layer, use_tree: bool = True) -> torch.Tensor:
        """float64 softmax per request, head and row over the keys req_to_token[row, :S_b + n] (after the KV write
        of the n rows); [T, H * Ev] float32."""
        from sglang.srt.layers.radix_attention import AttentionType

        causal = layer.attn_type != AttentionType.ENCODER_ONLY
        n, group = self.n, self.H // self.G
        k_cache = self.kv_pool.get_key_buffer(layer.layer_id).double()
        v_cache = self.kv_pool.get_value_buffer(layer.layer_id).double()
        q = self.q.double().view(-1, self.H, self.E)
        out = torch.zeros(q.shape[0], self.H, self.Ev, dtype=torch.float64)
        for b, slots in enumerate(self.slots):
            visible = self.visible(b, causal, layer.sliding_window_size, use_tree)
            for h in range(self.H):
                keys, values = k_cache[slots.long(), h // group], v_cache[slots.long(), h // group]
                for i in range(n):
                    scores = (keys @ q[b * n + i, h]) * layer.scaling
                    scores[~visible[i]] = -math.inf
                    out[b * n + i, h] = torch.softmax(scores, 0) @ values
        return out.view(q.shape[0], -1).float()


# --- live-server helpers (marker `server`) --------------------------------------------------------------------------
def eval_chat_prompts(model_dir: str, gsm8k: int, humaneval: int) -> list[list[int]]:
    """Token ids of the first `gsm8k` GSM8K and `humaneval` HumanEval evaluation prompts, chat-rendered."""
    from transformers import AutoTokenizer

    from jetspec_sglang.data import encode_chat, load_prompts

    tok = AutoTokenizer.from_pretrained(model_dir)
    return encode_chat(tok, load_prompts("gsm8k", "eval")[:gsm8k] + load_prompts("humaneval", "eval")[:humaneval])


def generate_greedy(server, prompts: list[list[int]], concurrency: int, max_new_tokens: int) -> list[dict]:
    """One greedy /generate per prompt, `concurrency` in flight; results in prompt order."""
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda ids: server.generate(input_ids=ids, max_new_tokens=max_new_tokens,
                                                         temperature=0), prompts))
