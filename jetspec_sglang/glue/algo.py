"""JetSpecAlgo: the CustomSpecAlgo that SGLang 0.5.23 dispatches on for `--speculative-algorithm JETSPEC`.

Every predicate or method the scheduler, model runner or argument pipeline calls is answered here; each carries
the call site it feeds (file:line in the 0.5.23 wheel) and why the answer is right. See
shared docs sglang-integration.md section 3 for the full table.
"""
from __future__ import annotations

from sglang.srt.speculative.spec_registry import CustomSpecAlgo

ALGO_NAME = "JETSPEC"


class JetSpecAlgo(CustomSpecAlgo):
    # --- predicates -------------------------------------------------------------------------------------------
    def is_dflash_family(self) -> bool:
        # True: target aux-hidden capture (model_runner_components/spec_aux_hidden_state.py:207), the draft KV
        # pool and its sizing (pool_configurator.py:111), DFlashDraftInputV2.prepare_for_decode's KV reservation
        # (spec_utils.py:1259) and the draft runner's input-embeds graph buffers all come from the DFlash path,
        # which JetSpec reuses unchanged. is_dflash() stays False so DFLASH-only branches stay off.
        return True

    def supports_target_verify_for_draft(self) -> bool:
        # decode_cuda_graph_runner.py:365 raises for a draft runner without it; the JetSpec draft block runs in
        # TARGET_VERIFY mode exactly like DFLASH's.
        return True

    def supports_prefill_shared_read_done(self) -> bool:
        # runner_utils/shared_read_event.py:31: target EXTEND has no later speculative reader of shared
        # buffers (the draft KV is materialised from the prefill's hidden states before returning).
        return True

    def supports_grammar_overlap(self) -> bool:
        # scheduler.py:4698: the grammar FSM is not advanced inside verify; grammar runs synchronously.
        return False

    # --- methods CustomSpecAlgo lacks in 0.5.23 (AttributeError in Scheduler.__init__ without them) ------------
    def create_future_map(self, device, req_to_token_pool, needs_cpu_seq_lens=True, needs_confidence_relay=False):
        # scheduler.py:1681 init_overlap(), always called: the same FutureMap the enum members build
        # (spec_info.py:185-200); the relay carries bonus tokens and new sequence lengths.
        from sglang.srt.managers.overlap_utils import FutureMap

        return FutureMap(device, self, req_to_token_pool, needs_cpu_seq_lens, needs_confidence_relay)

    def need_topk(self) -> bool:
        # overlap_utils.py:381 FutureMap._maybe_init_forward_bufs: no EAGLE top-k relay buffers are needed.
        return False

    def carries_draft_hidden_states(self) -> bool:
        # scheduler.py:1540 init_disaggregation(): no draft hidden state crosses a PD boundary (PD is rejected).
        return False

    def get_platform_worker_cls(self):
        # adaptive_spec_params.py:66: no platform-specific worker; adaptive speculation is rejected at startup.
        return None

    # --- sizing ---------------------------------------------------------------------------------------------------
    def get_num_tokens_per_req_for_target_verify(self, num_draft_tokens: int, is_draft_worker: bool) -> int:
        # spec_utils.py:83 -> ModelRunner.decode_num_tokens_per_req (model_runner.py:876): the graph capture width
        # and the Triton/FA3 verify width. The target verifies N tree nodes; the draft runs a block of L + 1.
        if is_draft_worker:
            from sglang.srt.runtime_context import get_spec

            return int(get_spec().speculative_num_steps) + 1
        return num_draft_tokens

    def handle_server_args(self, server_args) -> None:
        # speculative_hook.py:269-279: runs on a recording stand-in; writes become declared resolutions.
        from jetspec_sglang.glue.args import handle_server_args

        handle_server_args(server_args)


def worker_factory(server_args):
    """SpeculativeAlgorithm.register factory: returns the worker class (the scheduler instantiates it)."""
    from jetspec_sglang.glue.worker import JetSpecWorker

    return JetSpecWorker
