"""Replay (bench_accept's method): the accept lengths it replays equal the ReferenceEngine's, round for round,
with an oracle draft that really accepts; and the many-block draft of every anchor equals the engine's
incremental head draft."""
import pytest
import torch
from oracle_draft import OracleDraft

from jetspec_sglang.config import JetSpecConfig
from jetspec_sglang.draft_head import init_draft_head
from jetspec_sglang.draft_head_config import make_draft_head_config
from jetspec_sglang.models import prepare_model
from jetspec_sglang.reference import ReferenceEngine, SamplingParams
from jetspec_sglang.reference.loading import load_target
from jetspec_sglang.reference.replay import Trajectory, draft_all_anchors, replay
from jetspec_sglang.taps import forward_with_taps
from jetspec_sglang.tree import draft_topk

N_NEW = 40


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    target, tok = load_target(prepare_model("tiny-qwen3", tmp_path_factory.mktemp("m") / "tq"))
    config = make_draft_head_config(target.config, mask_token_id=tok.mask_token_id, block_size=8, causal_head=True)
    head = init_draft_head(config, seed=1).eval()
    head.attach_target(target.get_input_embeddings(), target.get_output_embeddings())
    prompt = tok("def hello(world):\n    return").input_ids
    plain = ReferenceEngine(target, mode="ar", eos_token_ids=()).generate(prompt, SamplingParams(max_new_tokens=N_NEW))
    return target, head, prompt, plain.token_ids


def _trajectory(target, head, prompt, cont):
    seq = torch.tensor(prompt + cont)
    out, taps = forward_with_taps(target, head.config.target_layer_ids, seq[None])
    return Trajectory(seq, len(prompt), out.logits[0].argmax(-1)), taps[0]


@pytest.mark.parametrize("algo", ["best_first", "accum_logp"])
@pytest.mark.parametrize("budget,width", [(8, 3), (16, 7), (8, 1)])
def test_replay_equals_engine_with_real_acceptance(setup, budget, width, algo):
    target, head, prompt, cont = setup
    L = head.config.depth
    oracle = OracleDraft(head, prompt + cont)
    engine = ReferenceEngine(target, oracle, JetSpecConfig(budget=budget, width=width, depth=L, tree_algo=algo),
                             "tree", eos_token_ids=())
    result = engine.generate(prompt, SamplingParams(max_new_tokens=N_NEW))
    assert result.token_ids == cont
    assert max(result.metrics["accept_lens"]) > 2, "the oracle must make multi-token rounds happen"
    traj, taps = _trajectory(target, head, prompt, cont)
    tokens, logprobs = [], []
    for p in range(len(prompt), len(prompt) + len(cont)):  # the oracle's draft at every possible anchor
        cache = head.new_cache()
        head.append_context(cache, taps[None, :p])
        t, lp = draft_topk(oracle.draft_logits(cache, traj.seq_T[p: p + 1]), width)
        tokens.append(t[0])
        logprobs.append(lp[0])
    replayed = replay(traj, torch.stack(tokens), torch.stack(logprobs), budget, width, L, N_NEW, tree_algo=algo)
    assert replayed == result.metrics["accept_lens"]


def test_many_block_draft_equals_incremental_draft(setup):
    target, head, prompt, cont = setup
    traj, taps = _trajectory(target, head, prompt, cont)
    anchors = torch.arange(len(prompt), len(prompt) + 12)
    tokens, logprobs = draft_all_anchors(head, taps, traj.seq_T, anchors, width=5, chunk=5)
    for a, p in enumerate(anchors.tolist()):
        cache = head.new_cache()
        head.append_context(cache, taps[None, :p])
        t, lp = draft_topk(head.draft_logits(cache, traj.seq_T[p: p + 1]), 5)
        assert torch.equal(t[0], tokens[a])
        torch.testing.assert_close(lp[0], logprobs[a], rtol=1e-4, atol=1e-4)
