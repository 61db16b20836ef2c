"""JetSpecWorker: DFlashWorkerV2 with a tree decode step (jetspec-method.md 1; sglang-integration.md 11).

Prefill, the draft runner, target aux-hidden capture and draft-KV materialisation are DFLASH's. One decode step:
  1. the draft block [bonus, MASK x L] in one draft forward (block-causal head) -> per-depth top-K log-probs;
  2. the tree (jetspec_sglang.ops: build_tree, ancestor mask, links, FULL mask), positions prefix + depth;
  3. one target TARGET_VERIFY forward over the N nodes, SGLang's eagle_sample (greedy or sampled, grammar);
  4. accepted path's target KV moved to the front of the window, predicts/hidden states compacted;
  5. the accepted nodes' hidden states appended to the draft KV (row r at position prefix + r).
SGLang objects are translated to suffixed tensors once, here; the tree work is the pure library's.
"""
from __future__ import annotations

import logging

import torch
from sglang.kernels.ops.speculative.cache_locs import assign_extend_cache_locs_func
from sglang.srt.layers.logits_processor import LogitsProcessor, should_apply_lm_head_quant_method
from sglang.srt.layers.logprob_processor import compute_spec_logprobs
from sglang.srt.lora.layers import unwrap_lora_layer
from sglang.srt.managers.scheduler import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch, ForwardMode
from sglang.srt.models.dflash import candidate_topk
from sglang.srt.runtime_context import get_observability, get_parallel, get_schedule, get_spec
from sglang.srt.speculative.dflash_utils import is_dense_head_weight
from sglang.srt.speculative.dflash_worker_v2 import DFlashWorkerV2, _resolve_dflash_embedding_module
from sglang.srt.speculative.draft_worker_common import build_block_pos_offsets, make_draft_block_spec_info
from sglang.srt.speculative.draft_worker_common import make_draft_input_v2
from sglang.srt.speculative.eagle_info import EagleVerifyInput
from sglang.srt.speculative.eagle_utils import eagle_prepare_for_verify, eagle_sample
from sglang.srt.speculative.eagle_worker_common import _finalize_accept_tree_path
from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
from sglang.srt.speculative.spec_utils import GrammarTree, build_grammar_vocab_mask, draft_tp_context
from sglang.srt.utils import is_cpu

from jetspec_sglang import ops, profiling
from jetspec_sglang.config import config_from_env, cpu_packed_weights
from jetspec_sglang.draft_topk import DraftProjection
from jetspec_sglang.draft_vocab import resolve_draft_vocab
from jetspec_sglang.glue import cpu_packed, hooks, limits
from jetspec_sglang.glue.budget_feed import BudgetFeed
from jetspec_sglang.tree import empty_tree, top2gap_fanout_caps

logger = logging.getLogger(__name__)


class JetSpecWorker(DFlashWorkerV2):
    def __init__(self, server_args, gpu_id, nccl_port, target_worker):
        on_cpu = is_cpu()
        _check_hooks_applied(on_cpu)
        if on_cpu:
            from jetspec_sglang.glue import cpu_sampling

            cpu_sampling.install()
        dflash_logger = logging.getLogger(DFlashWorkerV2.__module__)
        dflash_logger.addFilter(_DFLASH_SIZING_LOGS)
        try:
            super().__init__(server_args, gpu_id, nccl_port, target_worker)
        finally:
            dflash_logger.removeFilter(_DFLASH_SIZING_LOGS)
        spec = get_spec()
        self.max_budget = int(spec.speculative_num_draft_tokens)  # N (root included)
        self.depth = int(spec.speculative_num_steps)  # L
        self.jetspec = config_from_env(budget=self.max_budget, depth=self.depth)
        # DFLASH sized its block as N; the JetSpec draft block is L + 1 wide.
        self.block_size = self.depth + 1
        self.draft_model.set_block_size(self.block_size)
        self._block_pos_offsets = build_block_pos_offsets(length=self.block_size, device=self.device)
        self._draft_block_spec_info = make_draft_block_spec_info(draft_token_num=self.block_size, device=self.device)
        self._draft_block_spec_infos = {self.block_size: self._draft_block_spec_info}  # block length -> spec info
        # A tree of N nodes reaches depth N - 1 at most, so a budget N < L + 1 needs only the first N block rows.
        # For a block-causal head without block convolutions those rows do not see the later ones: drafting the
        # shorter block is exact. On CPU only: the GPU draft CUDA graph is captured at the full block.
        self._short_blocks = on_cpu and prefix_exact_draft(self.draft_model)
        self._draft_block_ids_buf = None  # re-allocated B wide by _ensure_draft_block_buffers
        # eagle_sample needs the full-vocabulary verify logits (TP > 1: gathered before sampling).
        for module in self.target_worker.model_runner.model.modules():
            if isinstance(module, LogitsProcessor):
                module.defer_verify_gather = False
        self._target_logits_processor = None
        if not on_cpu:  # sampled verification's [B * N, V] fp32 temporaries live outside the KV pool
            runner = self.target_worker.model_runner
            limits.check_sampled_verify_memory(
                int(get_schedule().max_running_requests or 1), self.max_budget, int(runner.model_config.vocab_size),
                torch.cuda.get_device_properties(self.device).total_memory, float(runner.mem_fraction_static))
        self._row_headroom_checked = False  # the req_to_token pool is allocated after this worker is built
        # CPU: the verify attention (glue/cpu_attention.py) reads the compact [bs, N, N] tree mask, so no
        # prefix-wide FULL mask is built every step; GPU backends read SGLang's FULL layout.
        self._compact_verify_mask = on_cpu
        # CPU: the draft rows are projected through the target's LM head by DraftProjection (a bf16 copy of an
        # fp32 head where measured faster; lossless, draft_topk.py); GPU: SGLang's candidate_topk kernels.
        self._draft_projection = (_cpu_draft_projection(self.target_worker.model_runner.model.lm_head, self.depth,
                                                        self.jetspec, server_args.speculative_draft_model_path)
                                  if on_cpu else None)
        # CPU: the verify's fp32 logits are copied into one reused buffer (SGLang's next_token_logits_buffer, which
        # its CUDA graphs use the same way) instead of a fresh [B * N, V] tensor per step, whose page faults cost
        # ~4 ns per element on this project's CPU (bf16/fp16 targets: their logits are cast to fp32 there).
        self._verify_logits_rows = _verify_logits_rows(self.target_worker.model_runner) if on_cpu else 0
        self._verify_logits_buf = None
        self._prof = profiling.active()  # None unless JETSPEC_PROFILE is set (bench/bench_round.py)
        if self._prof is not None and str(self.device).startswith("cuda"):
            self._prof.sync = torch.cuda.synchronize
        self.budget_feed = BudgetFeed(self.jetspec, self.device, get_observability().decode_log_interval)
        logger.info("JETSPEC worker: budget=%d (%s) depth=%d draft block=%d (head block_size=%s; budgets N < %d draft "
                    "%s) width=%d algo=%s ladder=%s ops=%s draft model=%s", self.max_budget,
                    self.budget_feed.chooser.policy, self.depth, self.block_size,
                    getattr(self.draft_model.config, "block_size", None), self.block_size,
                    "N rows" if self._short_blocks else "the full block", self.jetspec.width,
                    self.jetspec.tree_algo, self.jetspec.budget_ladder or "off", self.jetspec.backend,
                    type(self.draft_model).__name__)
        if self._draft_projection is not None:
            logger.info("JETSPEC draft top-K projection: %s", self._draft_projection.reason)
        for name, runner in (("target", self.target_worker.model_runner), ("draft", self.draft_model_runner)):
            stats = cpu_packed.packed_stats(runner)
            if stats is not None:
                logger.info("JETSPEC CPU packed weights (%s): %d weights, %.0f MB", name, stats[0], stats[1] / 2**20)

    def prewarm_sampling(self):
        # DFLASH's rehearsal is B-shaped for its own sampler; JETSPEC samples through eagle_sample.
        return self.model_runner.prewarm_sampling()

    def _maybe_build_draft_sampler(self):
        # DFLASH folds its greedy argmax of the draft block into the draft CUDA graph; JETSPEC needs the block's
        # hidden states for its own per-depth top-K, so the draft graph captures the plain forward.
        return None

    def _validate_phase1_sampling_support(self, batch) -> None:
        # DFLASH warns that sampling falls back to greedy; JETSPEC verifies sampled requests losslessly.
        return None

    def forward_batch_generation(self, batch, on_publish=None, grammar_barrier=None, pp_proxy_tensors=None):
        if batch.forward_mode.is_extend() or batch.is_extend_in_batch or batch.forward_mode.is_idle():
            self.budget_feed.interrupt()
            return super().forward_batch_generation(batch, on_publish, grammar_barrier, pp_proxy_tensors)
        return self._decode(batch, on_publish, grammar_barrier)

    # --- one decode step ------------------------------------------------------------------------------------------
    def _decode(self, batch, on_publish, grammar_barrier) -> GenerationBatchResult:
        bs, device = len(batch.seq_lens), self.device
        B, L = self.block_size, self.depth
        if not self._row_headroom_checked:
            _check_row_headroom(self.model_runner.req_to_token_pool.req_to_token,
                                self.model_runner.model_config.context_len)
            self._row_headroom_checked = True
        N = self.budget_feed.begin_step(bs)  # fixed, ladder or auto (jetspec_sglang.budget)
        prof = self._prof
        if prof:
            prof.worker_begin(N)
        prefix_B = batch.seq_lens  # committed tokens (with target KV); the bonus is the uncached anchor
        bonus_B = batch.spec_info.bonus_tokens.view(-1)
        window_BW = assign_extend_cache_locs_func(
            req_pool_indices=batch.req_pool_indices, req_to_token=self.model_runner.req_to_token_pool.req_to_token,
            start_offset=prefix_B, end_offset=prefix_B + max(N, B), batch_size=bs, draft_token_num=max(N, B),
            device=device).view(bs, max(N, B))
        host_bound_B = self._host_prefix_bound(batch)  # >= committed lengths, on the host
        translator = self.target_worker.model_runner.kv_index_translator

        def plan(width):
            return translator.plan(req_pool_indices=batch.req_pool_indices, seq_lens=prefix_B,
                                   seq_lens_cpu=host_bound_B, write_virtual=flat(window_BW[:, :width]),
                                   read_extent=width)

        backend = self.jetspec.backend
        if N == 1:  # the ladder's last step: no speculation, the verify forward decodes one token
            tree = empty_tree(bonus_B, 1)
        else:
            Bq = min(B, N) if self._short_blocks else B  # draft block rows this budget can use
            logprobs_BLK, tokens_BLK = self._draft(batch, prefix_B, bonus_B, window_BW[:, :Bq], host_bound_B,
                                                   plan(Bq), prof)
            caps_BL = None
            if self.jetspec.tree_algo == "top2gap":
                caps_BL = top2gap_fanout_caps(logprobs_BLK, self.jetspec.width, self.jetspec.top2gap_beta,
                                              self.jetspec.top2gap_gap0)
            tree = ops.build_tree(tokens_BLK, logprobs_BLK, bonus_B, N, caps_BL, backend=backend,
                                  best_first=self.jetspec.tree_algo == "best_first")
        if prof:
            prof.lap("tree_build")
        tm = ops.build_tree_mask(tree.parents_BN, tree.depth_BN, prefix_B, max_depth=L, backend=backend)
        if self._compact_verify_mask:
            custom_mask = tm.mask_BNN.reshape(-1)
        else:
            total = N * (int(host_bound_B.sum()) + bs * N)
            custom_mask = ops.build_verify_mask_full(tm.mask_BNN, prefix_B, total=total, backend=backend)
        if prof:
            prof.lap("masks")
        verify_plan = plan(N)
        verify_input = EagleVerifyInput(
            draft_token=flat(tree.tokens_BN), custom_mask=custom_mask, positions=flat(tm.positions_BN),
            retrieve_index=tm.retrieve_index_BN, retrieve_next_token=tm.first_child_BN,
            retrieve_next_sibling=tm.next_sibling_BN, retrieve_cum_len=None,
            spec_steps=L, topk=-1, draft_token_num=N, capture_hidden_mode=CaptureHiddenMode.FULL,
            seq_lens_sum=None, seq_lens_cpu=None, prepared_out_cache_loc=flat(window_BW[:, :N]),
            kv_loc_plan=verify_plan,
        )
        return self._verify_and_commit(batch, verify_input, verify_plan, prefix_B, host_bound_B, N,
                                       on_publish, grammar_barrier, prof)

    def _host_prefix_bound(self, batch) -> torch.Tensor:
        """Host upper bound of the committed lengths. Overlap scheduling lags the host copy by one step, which
        commits at most L + 1 tokens; the reserved lengths bound it when no host copy exists."""
        if batch.seq_lens_cpu is not None:
            return batch.seq_lens_cpu.to(torch.int64) + (self.depth + 1)
        if batch.spec_info.nxt_kv_lens_cpu is not None:
            return batch.spec_info.nxt_kv_lens_cpu.to(torch.int64)
        return torch.tensor([req.kv.kv_allocated_len for req in batch.reqs], dtype=torch.int64)

    def _draft(self, batch, prefix_B, bonus_B, block_loc_BQ, host_bound_B, draft_plan, prof=None):
        """One draft forward over [bonus, MASK x (B - 1)] at prefix + [0, B - 1], B = block_loc_BQ's width (the
        full block L + 1, or fewer rows for a small budget); returns per-depth top-K (logprobs, ids) [bs, B - 1, K]."""
        bs, B, K = len(prefix_B), block_loc_BQ.shape[1], self.jetspec.width
        target_model = self.target_worker.model_runner.model
        embed = unwrap_lora_layer(_resolve_dflash_embedding_module(self.draft_model, target_model))
        lm_head = unwrap_lora_layer(target_model.lm_head)
        block_ids_BQ = torch.full((bs, B), int(self._mask_token_id), dtype=torch.long, device=self.device)
        block_ids_BQ[:, 0] = bonus_B
        embeds_TM = (self._full_embed_gpu[block_ids_BQ] if self._full_embed_gpu is not None else embed(block_ids_BQ))
        if self._noise_embed_scale != 1.0:
            embeds_TM = embeds_TM * self._noise_embed_scale
        seq_lens_cpu = host_bound_B.to(torch.int32)
        forward_batch = ForwardBatch(
            forward_mode=ForwardMode.TARGET_VERIFY, batch_size=bs, input_ids=block_ids_BQ.reshape(-1),
            req_pool_indices=batch.req_pool_indices, seq_lens=prefix_B, out_cache_loc=flat(block_loc_BQ),
            seq_lens_sum=int(seq_lens_cpu.sum()), seq_lens_cpu=seq_lens_cpu,
            positions=(prefix_B[:, None] + self._block_pos_offsets[:B]).reshape(-1),
            input_embeds=embeds_TM.reshape(bs * B, -1),
            # The draft block is DFLASH's block forward exactly; its runner's branches key on DFLASH.
            spec_algorithm=SpeculativeAlgorithm.DFLASH, spec_info=self._block_spec_info(B),
            capture_hidden_mode=CaptureHiddenMode.NULL, global_num_token_non_padded_cpu=bs * B,
            can_run_decode_cuda_graph=batch.can_run_decode_cuda_graph,
        )
        draft_plan.bind(forward_batch, self.draft_model_runner.kv_index_translator)
        if prof:
            prof.lap("prepare")
        with torch.inference_mode(), draft_tp_context(self.draft_parallel_layout):
            hidden = self.draft_model_runner.forward(forward_batch).logits_output.hidden_states
            if prof:
                prof.lap("draft_forward")
            hidden_TM = hidden.view(bs, B, -1)[:, 1:].reshape(bs * (B - 1), -1)
            if self._draft_projection is not None:
                logprobs_TK, ids_TK = self._draft_projection(hidden_TM, K)
            else:
                ids_TK, values_TK, lse_T = candidate_topk(hidden_TM, lm_head, fast_topk_width(K, hidden_TM.is_cuda),
                                                          with_partition=True)
                ids_TK, values_TK = ids_TK[:, :K], values_TK[:, :K]  # sorted descending: the first K are the top-K
                logprobs_TK = values_TK.float() - lse_T.float()[:, None]
        logprobs_BLK = logprobs_TK.view(bs, B - 1, K)
        if prof:
            prof.lap("topk")
        return logprobs_BLK, ids_TK.view(bs, B - 1, K)

    def _block_spec_info(self, width: int):
        info = self._draft_block_spec_infos.get(width)
        if info is None:
            info = self._draft_block_spec_infos[width] = make_draft_block_spec_info(draft_token_num=width,
                                                                                    device=self.device)
        return info

    def _verify_and_commit(self, batch, verify_input, verify_plan, prefix_B, host_bound_B, N, on_publish,
                           grammar_barrier, prof=None) -> GenerationBatchResult:
        bs = len(prefix_B)
        batch.spec_info = verify_input
        saved = batch.seq_lens_cpu, batch.seq_lens_sum
        batch.seq_lens_cpu = host_bound_B.to(torch.int32)
        batch.seq_lens_sum = int(host_bound_B.sum())
        verify_batch, can_run_graph = eagle_prepare_for_verify(verify_input, self.target_worker.model_runner
                                                               .req_to_token_pool, batch, self.target_worker)
        batch.seq_lens_cpu, batch.seq_lens_sum = saved
        if bs * N <= self._verify_logits_rows:
            verify_batch.next_token_logits_buffer = self._verify_logits(bs * N)
        if prof:
            prof.lap("verify_prepare")
        grammar_tree = (GrammarTree.from_device(verify_input.retrieve_next_token, verify_input.retrieve_next_sibling,
                                                verify_input.draft_token.view(bs, N)) if batch.has_grammar else None)
        target_out = self.target_worker.forward_batch_generation(batch=None, forward_batch=verify_batch,
                                                                 is_verify=True)
        logits_output = target_out.logits_output
        if prof:
            prof.lap("verify_forward")
        grammar_mask = None
        if grammar_tree is not None:
            grammar_mask = build_grammar_vocab_mask(reqs=batch.reqs, tree=grammar_tree,
                                                    sampling_info=batch.sampling_info,
                                                    device=verify_input.retrieve_next_token.device,
                                                    barrier=grammar_barrier)
        predict, accept_lens, accept_index = eagle_sample(verify_input, batch, logits_output, grammar_mask)
        self.budget_feed.observe(accept_index, N)
        new_seq_lens = prefix_B + accept_lens.to(prefix_B.dtype)
        if on_publish is not None:
            on_publish(new_seq_lens)
        if batch.return_logprob:
            compute_spec_logprobs(batch, logits_output, predict, accept_index=accept_index)
        if prof:
            prof.lap("sample")
        hidden = logits_output.hidden_states
        if hidden is None:
            raise RuntimeError("JETSPEC verify returned no target hidden states (aux capture is off?)")
        logits_output.hidden_states = None  # only the committed rows are needed: gathered below, not compacted
        # accept_index is [bs, L + 1] (-1 padded); a path has at most N nodes, and SGLang's compaction writes the
        # first L + 1 entries into each request's N-wide block, so a ladder budget N < L + 1 passes N columns -
        # contiguous: the Triton fill_accept_out_cache_loc reads raw memory, ignoring a slice's strides.
        C = min(N, accept_index.shape[1])  # a round commits at most C = min(N, L + 1) nodes
        accept_BC = accept_index[:, :C].contiguous()
        predict = _finalize_accept_tree_path(batch, accept_BC, accept_lens, predict, logits_output, bs,
                                             token_to_kv_pool_allocator=self.target_worker.model_runner
                                             .token_to_kv_pool_allocator, num_draft_tokens=N)
        bonus_B = predict.view(bs, N).gather(1, (accept_lens.to(torch.int64) - 1)[:, None])[:, 0]
        if prof:
            prof.lap("kv_compaction")
        self._append_committed_to_draft_kv(hidden, accept_BC, accept_lens, verify_plan, prefix_B, N)
        if prof:
            prof.lap("draft_kv_append")
        return GenerationBatchResult(
            logits_output=logits_output, next_token_ids=predict, accept_lens=accept_lens, accept_index=accept_index,
            can_run_cuda_graph=can_run_graph, speculative_num_draft_tokens=N,
            next_draft_input=make_draft_input_v2(bonus_tokens=bonus_B, new_seq_lens=new_seq_lens),
            new_seq_lens=new_seq_lens, routed_experts_output=target_out.routed_experts_output,
            indexer_topk_output=target_out.indexer_topk_output, extra_keep_alive_refs=[verify_batch],
        )

    def _verify_logits(self, rows: int) -> torch.Tensor:
        """fp32 [rows, V] view of the reused verify-logits buffer (grown to the most rows seen)."""
        if self._verify_logits_buf is None or self._verify_logits_buf.shape[0] < rows:
            vocab = int(self.target_worker.model_runner.model_config.vocab_size)
            self._verify_logits_buf = torch.empty(rows, vocab, dtype=torch.float32, device=self.device)
        return self._verify_logits_buf[:rows]

    def _append_committed_to_draft_kv(self, hidden_TM, accept_BC, accept_lens_B, verify_plan, prefix_B, N):
        """Draft KV of the committed path: row r of request b (accepted node accept_BC[b, r], position prefix + r)
        goes to the r-th slot of b's window. Only the C <= L + 1 path rows are projected through the head's fc and
        k/v (not all N verified nodes); -1 padding reads node 0 and lies past accept_lens, which the prefix-valid
        writer never stores."""
        bs, C = accept_BC.shape
        rows_T = accept_BC.to(torch.int64).clamp(min=0).reshape(-1)
        cache_loc_BC = self._draft_write_ids(verify_plan).view(bs, N)[:, :C].contiguous()
        self._append_target_hidden_to_draft_kv_by_loc(
            target_hidden=hidden_TM.reshape(bs * N, -1).index_select(0, rows_T), cache_loc=cache_loc_BC.view(-1),
            cache_loc_2d=cache_loc_BC, positions=(prefix_B[:, None] + torch.arange(C, device=self.device)).reshape(-1),
            commit_lens=accept_lens_B.to(torch.int32),
        )


VERIFY_LOGITS_BUFFER_BYTES = 256 << 20  # the reused CPU verify-logits buffer grows to at most this


def _verify_logits_rows(model_runner) -> int:
    """Most verify rows (B * N) whose fp32 logits go to the reused buffer: 0 for an fp32 target (its logits are
    fp32 already; a buffer would add a copy), else what fits VERIFY_LOGITS_BUFFER_BYTES."""
    if model_runner.model_config.dtype == torch.float32:
        return 0
    return VERIFY_LOGITS_BUFFER_BYTES // (4 * int(model_runner.model_config.vocab_size))


def prefix_exact_draft(draft_model) -> bool:
    """True when the first r rows of a draft block do not depend on the rows after them, so a shorter block gives
    the same hidden states: a block-causal head (JetSpecDraftModel.causal_head) with no block convolutions
    (DFlash's attention/mlp convs index the block layout by its size)."""
    if not getattr(draft_model, "causal_head", False):
        return False
    return all(getattr(layer, name, None) is None for layer in draft_model.layers
               for name in ("attention_conv", "mlp_conv"))


def flat(x_BW: torch.Tensor) -> torch.Tensor:
    """x_BW as a contiguous [B * W] tensor. SGLang's Triton kernels read these index tensors as raw memory; a
    column slice window_BW[:, :1] reshapes to a strided *view* ([8, 1] with row stride W -> (8,) with stride W),
    which they would misread (seen at ladder budget 1, caught by the strict CPU stand-in)."""
    return x_BW.reshape(-1).contiguous()


class _DropDflashSizingLogs(logging.Filter):
    """DFlashWorkerV2.__init__ logs its block as N (`DFLASH block size mismatch ...`, `Initialized DFLASH draft
    runner ... block_size=N`); the JETSPEC block is L + 1, which the worker logs itself right after."""

    PREFIXES = ("DFLASH block size mismatch", "Initialized DFLASH draft runner")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.PREFIXES)


_DFLASH_SIZING_LOGS = _DropDflashSizingLogs()


def _cpu_draft_projection(lm_head, depth: int, config, head_dir: str | None) -> DraftProjection | None:
    """The CPU draft top-K's projection over the target's original vocabulary (padding rows cut), restricted to the
    draft vocabulary `config.draft_vocab` resolves to (draft_vocab.py), or None where SGLang's candidate_topk must
    run: a quantized or vocabulary-sharded (TP > 1) LM head (the same screen as candidate_topk's)."""
    head = unwrap_lora_layer(lm_head)
    weight = getattr(head, "weight", None)
    if should_apply_lm_head_quant_method(head, getattr(head, "quant_method", None)) \
            or not is_dense_head_weight(weight) or get_parallel().tp_size != 1:
        return None
    vocab_size = int(head.org_vocab_size)
    ids_S, why = resolve_draft_vocab(head_dir, config.draft_vocab, vocab_size, config.width)
    logger.info("JETSPEC draft vocabulary: %s", why)
    return DraftProjection.build(weight.detach()[:vocab_size], config.draft_topk_dtype, rows=depth, ids_S=ids_S,
                                 pack=cpu_packed_weights() != "off")


def fast_topk_width(width: int, on_cuda: bool) -> int:
    """The k to ask candidate_topk for so that the top-`width` is its first `width` columns: on CUDA the next
    power of two, since SGLang's tiled lilicorr_topk_lse (kernels/ops/speculative/lilicorr.py:124) falls back to
    a full-vocabulary torch top-k + logsumexp for any other k (7, the default width -> 8); elsewhere `width`.
    Example: (7, True) -> 8, (8, True) -> 8, (33, True) -> 64, (7, False) -> 7."""
    return 1 << (width - 1).bit_length() if on_cuda else width


def _check_row_headroom(req_to_token: torch.Tensor, context_len: int) -> None:
    """Each decode step reserves committed + 2N KV slots in the request's req_to_token row (committed < context);
    a narrower row drops (CPU) or misplaces (GPU) the slots past its end, which then leak at release. The
    widen_row_headroom hook (glue/hooks.py) sizes the row; fail at the first decode step if it did not."""
    need = context_len + hooks.row_headroom()
    if req_to_token.shape[1] < need:
        raise RuntimeError(f"JETSPEC: req_to_token rows are {req_to_token.shape[1]} wide, the decode reservation "
                           f"needs {need} (context {context_len}); the hook on {hooks.ROW_HEADROOM} did not apply")


def _check_hooks_applied(on_cpu: bool) -> None:
    """SGLang's apply_hooks logs and continues on failure; a missing JETSPEC hook would mean wrong tokens."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    missing = [t for t in hooks.applied_hooks(on_cpu) if t not in HookRegistry._patched]
    if missing:
        raise RuntimeError(f"JETSPEC: SGLang hooks not applied in this process: {missing}. The plugin entry point "
                           "did not load (check SGLANG_PLUGINS includes 'jetspec') or a hook target moved; see the "
                           "'Failed to apply hooks' log lines")
