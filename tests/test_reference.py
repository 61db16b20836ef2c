"""Reference engine: speculative output == plain autoregressive output (greedy, fp32) across budgets, widths,
depths, head types, Qwen3/Llama targets and SDPA/eager attention; multi-token commits through an oracle draft;
tree verify == causal forward per branch; KV compaction; EOS / max tokens / stop strings inside an accepted
path; sampled decoding (seeded, and the first two tokens follow the target); incremental head cache ==
recomputation; the CLI."""
import json

import pytest
import torch
from conftest import tol
from oracle_draft import OracleDraft, corrupt_depth_for
from transformers import DynamicCache, Qwen3Config, Qwen3ForCausalLM

from jetspec_sglang import generate
from jetspec_sglang.config import JetSpecConfig
from jetspec_sglang.draft_head import init_draft_head
from jetspec_sglang.draft_head_config import make_draft_head_config
from jetspec_sglang.models import prepare_model
from jetspec_sglang.reference import (FINISH_EOS, FINISH_LENGTH, FINISH_STOP, ReferenceEngine, SamplingParams,
                                      compact_kv_cache, verify_tree)
from jetspec_sglang.reference.loading import load_target
from jetspec_sglang.taps import forward_with_taps
from jetspec_sglang.verify import target_probs

F32, F64 = tol(torch.float32), tol(torch.float64)
ARCHS = {"qwen3": "tiny-qwen3", "llama": "tiny-llama"}
GREEDY = SamplingParams(max_new_tokens=16)
PROMPT_TEXT = "def hello(world):\n    return"


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # tiny models: 2 threads on a shared 2-core box are ~50x slower than 1
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {arch: prepare_model(name, root / name) for arch, name in ARCHS.items()}


@pytest.fixture(scope="module")
def targets(model_dirs):
    loaded = {}

    def get(arch: str, attn: str = "sdpa", dtype: torch.dtype = torch.float32):
        if (arch, attn, dtype) not in loaded:
            loaded[arch, attn, dtype] = load_target(model_dirs[arch], dtype=dtype, attn_implementation=attn)
        return loaded[arch, attn, dtype]
    return get


def make_head(target, mask_token_id: int, causal: bool = True, block_size: int = 8, seed: int = 0):
    config = make_draft_head_config(target.config, mask_token_id=mask_token_id, block_size=block_size,
                                    causal_head=causal)
    head = init_draft_head(config, seed=seed).eval()
    head.attach_target(target.get_input_embeddings(), target.get_output_embeddings())
    return head


def prompt_ids(tokenizer) -> list[int]:
    return tokenizer(PROMPT_TEXT).input_ids


def ar_tokens(target, prompt: list[int], n: int) -> list[int]:
    """Greedy plain decoding through the same engine, EOS ignored: the oracle of every parity test."""
    engine = ReferenceEngine(target, mode="ar", eos_token_ids=())
    return engine.generate(prompt, SamplingParams(max_new_tokens=n)).token_ids


def assert_close_f64(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual, expected, **F64)


def assert_close_normwise_f32(actual: torch.Tensor, expected: torch.Tensor) -> None:
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error <= F32["rtol"], f"normwise relative error {error:.2e} > fp32 rtol {F32['rtol']}"


@pytest.mark.parametrize("arch", ARCHS)
def test_ar_engine_equals_hf_generate(targets, arch):
    target, tok = targets(arch)
    prompt = prompt_ids(tok)
    hf = target.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None)
    assert ar_tokens(target, prompt, 12) == hf[0, len(prompt):].tolist()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_speculative_greedy_equals_autoregressive(targets, arch, causal):
    target, tok = targets(arch)
    head = make_head(target, tok.mask_token_id, causal)
    prompt = prompt_ids(tok)
    expected = ar_tokens(target, prompt, GREEDY.max_new_tokens)
    configs = [JetSpecConfig(budget=b, width=w, depth=d) for b in (1, 2, 8, 64) for w in (1, 7) for d in (3, 7)]
    configs += [JetSpecConfig(budget=b, width=7, depth=7, tree_algo=a) for b in (8, 64)
                for a in ("top2gap", "accum_logp")]
    for config in configs:
        result = ReferenceEngine(target, head, config, eos_token_ids=()).generate(prompt, GREEDY)
        assert result.token_ids == expected, config
        assert result.finish_reason == FINISH_LENGTH and result.metrics["rounds"] >= 1
    chain = ReferenceEngine(target, head, JetSpecConfig(depth=7), mode="chain", eos_token_ids=())
    assert (chain.config.width, chain.config.budget) == (1, 8)
    assert chain.generate(prompt, GREEDY).token_ids == expected


def oracle_run(target, tok, config, n_new=40, corrupt=True, causal=True, **engine_kw):
    """(tree engine with an OracleDraft, greedy AR tokens, the drafter); AR runs L + 1 tokens past n_new so the
    oracle knows the truth at every depth of every round."""
    prompt = prompt_ids(tok)
    reference = ar_tokens(target, prompt, n_new + config.depth + 1)
    oracle = OracleDraft(make_head(target, tok.mask_token_id, causal), prompt + reference, corrupt)
    engine = ReferenceEngine(target, oracle, config, "tree", tok, **{"eos_token_ids": (), **engine_kw})
    return engine, reference, oracle


ORACLE_CONFIGS = {
    "tree64": JetSpecConfig(budget=64, width=7, depth=7),
    "chain8": JetSpecConfig(budget=8, width=1, depth=7),
    "tree2": JetSpecConfig(budget=2, width=7, depth=3),
    "top2gap16": JetSpecConfig(budget=16, width=7, depth=7, tree_algo="top2gap"),
    "accum64": JetSpecConfig(budget=64, width=7, depth=7, tree_algo="accum_logp"),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_oracle_draft_commits_many_tokens_and_equals_autoregressive(targets, arch, attn):
    target, tok = targets(arch, attn)
    for name, config in ORACLE_CONFIGS.items():
        engine, reference, oracle = oracle_run(target, tok, config)
        result = engine.generate(prompt_ids(tok), SamplingParams(max_new_tokens=40))
        assert result.token_ids == reference[:40], name
        lens = result.metrics["accept_lens"]
        L = config.depth
        assert max(lens) == min(config.budget, L + 1), (name, lens)  # multi-token commits did happen
        accepted = [a - 1 for a in lens]
        corrupt = [corrupt_depth_for(s, L) for s, _, _ in oracle.records]
        if config.width == 1:  # a chain stops right before its corrupted depth: partial acceptance
            assert all(a == c - 1 for a, c in zip(accepted, corrupt) if c is not None), (name, lens)
            assert any(0 < a < L for a in accepted)
        elif config.budget >= 16:  # the true token at rank 1 of the corrupted depth was accepted
            assert any(c is not None and a >= c for a, c in zip(accepted, corrupt)), (name, lens)
        assert result.metrics["tau"] == sum(lens) / len(lens) > 1


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tree_verify_equals_causal_forward_per_branch_and_compaction_keeps_the_path(targets, arch, attn, seed):
    """fp64, so reduction order is far below the tolerance. transformers' eager attention takes its softmax in
    fp32 whatever the model dtype, so eager is held to fp32's rtol, normwise (a mask or position bug is O(1))."""
    target, tok = targets(arch, attn, torch.float64)
    close = assert_close_f64 if attn == "sdpa" else assert_close_normwise_f32
    prompt = torch.tensor([prompt_ids(tok)])
    parents = [-1, 0, 0, 1, 1, 2, 3, 3, 5, 7, 0, 8]
    depth = [0]
    for p in parents[1:]:
        depth.append(depth[p] + 1)
    tokens_BN = torch.randint(4, 2000, (1, len(parents)))
    parents_BN, depth_BN = torch.tensor([parents]), torch.tensor([depth])
    layer_ids = [1, 3]
    with torch.no_grad():
        cache = DynamicCache(config=target.config)
        target(prompt, past_key_values=cache, use_cache=True)
        logits_BNV, taps_BNF = verify_tree(target, layer_ids, cache, tokens_BN, parents_BN, depth_BN, max(depth))
        assert cache.get_seq_length() == prompt.shape[1] + len(parents)
        for i in range(len(parents)):
            branch = [i]
            while parents[branch[-1]] >= 0:
                branch.append(parents[branch[-1]])
            ids_BT = torch.cat([prompt, tokens_BN[:, branch[::-1]]], dim=1)
            out, taps_BTF = forward_with_taps(target, layer_ids, ids_BT)
            close(logits_BNV[0, i], out.logits[0, -1])
            close(taps_BNF[0, i], taps_BTF[0, -1])
        path = [0, 2, 5, 8, 11]  # root -> 2 -> 5 -> 8 -> 11
        compact_kv_cache(cache, prompt.shape[1], torch.tensor(path))
        fresh = DynamicCache(config=target.config)
        target(torch.cat([prompt, tokens_BN[:, path]], dim=1), past_key_values=fresh, use_cache=True)
    assert cache.get_seq_length() == prompt.shape[1] + len(path)
    for mine, ref in zip(cache.layers, fresh.layers):
        close(mine.keys, ref.keys)
        close(mine.values, ref.values)


def test_compact_kv_cache_worked_example():
    cache = DynamicCache()
    keys = torch.arange(13.0).view(1, 1, 13, 1).expand(1, 2, 13, 4).contiguous()
    cache.update(keys, keys + 100, layer_idx=0)
    compact_kv_cache(cache, 7, torch.tensor([0, 2, 5]))
    assert cache.layers[0].keys[0, 1, :, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 9, 12]
    assert cache.layers[0].values[0, 0, :, 3].tolist() == [100, 101, 102, 103, 104, 105, 106, 107, 109, 112]
    with pytest.raises(ValueError, match="outside the cache length"):
        compact_kv_cache(cache, 7, torch.tensor([0, 5]))


def test_eos_inside_an_accepted_path_ends_the_output_there(targets):
    target, tok = targets("qwen3")
    config = JetSpecConfig(budget=8, width=1, depth=7)
    _, reference, _ = oracle_run(target, tok, config)
    j = next(i for i in range(4, len(reference)) if reference[i] not in reference[:i])  # first occurrence
    eos = reference[j]
    engine, _, _ = oracle_run(target, tok, config, corrupt=False, eos_token_ids=(eos,))
    result = engine.generate(prompt_ids(tok), SamplingParams(max_new_tokens=40))
    assert result.token_ids == reference[:j + 1] and result.finish_reason == FINISH_EOS
    assert 1 + sum(result.metrics["accept_lens"]) > j + 1  # the last round accepted tokens past the EOS
    ar = ReferenceEngine(target, mode="ar", eos_token_ids=(eos,)).generate(prompt_ids(tok),
                                                                          SamplingParams(max_new_tokens=40))
    assert ar.token_ids == result.token_ids


def test_max_new_tokens_cut_inside_an_accepted_path(targets):
    target, tok = targets("llama")
    engine, reference, _ = oracle_run(target, tok, JetSpecConfig(budget=8, width=1, depth=7), corrupt=False)
    result = engine.generate(prompt_ids(tok), SamplingParams(max_new_tokens=6))
    assert result.token_ids == reference[:6] and result.finish_reason == FINISH_LENGTH
    assert result.metrics["accept_lens"] == [8]  # one round committed 8 tokens; 5 of them were emitted


def test_stop_string_cuts_the_text_before_it(targets):
    target, tok = targets("qwen3")
    config = JetSpecConfig(budget=16, width=3, depth=7)
    _, reference, _ = oracle_run(target, tok, config)
    full_text = tok.decode(reference[:40], skip_special_tokens=True)
    start = len(tok.decode(reference[:12], skip_special_tokens=True))
    stop = full_text[start:start + 3]
    assert len(stop) == 3
    cut = full_text.find(stop)
    params = SamplingParams(max_new_tokens=40, stop=("\x00never", stop))
    engine, _, _ = oracle_run(target, tok, config, corrupt=False)
    ar = ReferenceEngine(target, mode="ar", tokenizer=tok, eos_token_ids=()).generate(prompt_ids(tok), params)
    spec = engine.generate(prompt_ids(tok), params)
    for result in (spec, ar):
        assert result.finish_reason == FINISH_STOP and result.text == full_text[:cut]
        ids = result.token_ids
        assert ids == reference[:len(ids)]
        assert stop in tok.decode(ids, skip_special_tokens=True)  # the last token completed the stop string
        assert stop not in tok.decode(ids[:-1], skip_special_tokens=True)
    assert max(spec.metrics["accept_lens"]) > 1


def test_sampled_decoding_is_seeded_and_emits_valid_tokens(targets):
    target, tok = targets("llama")
    head = make_head(target, tok.mask_token_id, causal=True)
    engine = ReferenceEngine(target, head, JetSpecConfig(budget=16, width=4, depth=7), tokenizer=tok)
    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.9, max_new_tokens=12, seed=3)
    first, again = engine.generate(prompt_ids(tok), params), engine.generate(prompt_ids(tok), params)
    other = engine.generate(prompt_ids(tok), SamplingParams(temperature=0.8, top_k=50, top_p=0.9,
                                                            max_new_tokens=12, seed=4))
    assert first.token_ids == again.token_ids and first.token_ids != other.token_ids
    assert all(0 <= t < target.config.vocab_size for t in first.token_ids)
    assert 1 <= len(first.token_ids) <= 12 and first.metrics["rounds"] >= 1
    assert isinstance(first.text, str)


def test_sampled_first_two_tokens_follow_the_target_distribution():
    """End-to-end plumbing of lossless sampling on an 8-token vocab: the joint law of the first two emitted
    tokens (prefill bonus, then the first round's accepted token or bonus) against the exact target law."""
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, initializer_range=0.2, tie_word_embeddings=True)
    target = Qwen3ForCausalLM(config).eval()
    head = make_head(target, mask_token_id=7, causal=True, block_size=3, seed=1)
    engine = ReferenceEngine(target, head, JetSpecConfig(budget=8, width=3, depth=2), eos_token_ids=())
    params = dict(temperature=0.6, top_k=4, top_p=0.9, max_new_tokens=2)
    prompt = [1, 4, 2]
    law = lambda ids: target_probs(target(torch.tensor([ids])).logits[:, -1:], torch.tensor([0.6]),  # noqa: E731
                                   torch.tensor([4]), torch.tensor([0.9]))[0, 0]
    with torch.no_grad():
        p1 = law(prompt)
        joint = torch.stack([p1[a] * law(prompt + [a]) for a in range(8)])  # [x1, x2]
    n = 400
    counts, routes = torch.zeros(8, 8), set()
    for s in range(n):
        result = engine.generate(prompt, SamplingParams(seed=s, **params))
        counts[result.token_ids[0], result.token_ids[1]] += 1
        routes.add(min(result.metrics["accept_lens"][0], 2))
    assert routes == {1, 2}  # the second token came both from an accepted tree node and from the bonus
    support = int((joint > 0).sum())
    tv = 0.5 * (counts / n - joint).abs().sum()
    bound = 0.5 * (support / n) ** 0.5 + (2.0 / n) ** 0.5  # E[TV] <= 0.5 sqrt(k/n); McDiarmid slack
    assert tv < bound, (float(tv), bound)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidir"])
def test_incremental_head_cache_equals_recomputing_the_whole_context(targets, causal):
    target, tok = targets("qwen3")
    config = JetSpecConfig(budget=16, width=3, depth=7)
    engine, reference, oracle = oracle_run(target, tok, config, n_new=60, causal=causal)
    prompt = prompt_ids(tok)
    result = engine.generate(prompt, SamplingParams(max_new_tokens=60))
    committed = prompt + result.token_ids
    head = oracle.head
    with torch.no_grad():  # taps of a plain causal forward over everything committed
        _, taps_BTF = forward_with_taps(target, head.config.target_layer_ids, torch.tensor([committed]))
        assert len(oracle.records) == result.metrics["rounds"] >= 5
        for s, anchor, logits_BLV in oracle.records:
            assert anchor == committed[s]
            fresh = head.new_cache(1)
            head.append_context(fresh, taps_BTF[:, :s])
            torch.testing.assert_close(head.draft_logits(fresh, torch.tensor([anchor])), logits_BLV, **F32)


def test_engine_rejects_bad_settings(targets):
    target, tok = targets("qwen3")
    head = make_head(target, tok.mask_token_id)
    with pytest.raises(ValueError, match="--depth <= 7"):
        ReferenceEngine(target, head, JetSpecConfig(depth=8))
    with pytest.raises(ValueError, match="needs a draft head"):
        ReferenceEngine(target, None, JetSpecConfig(depth=3))
    with pytest.raises(ValueError, match="batch 1"):
        ReferenceEngine(target, mode="ar").generate(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="--max-new-tokens"):
        ReferenceEngine(target, mode="ar").generate([1], SamplingParams(max_new_tokens=5000))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        ReferenceEngine(target, mode="ar").generate([1], SamplingParams(stop=("x",)))


def test_cli_json_prints_text_and_metrics(model_dirs, targets, tmp_path, capsys):
    target, tok = targets("qwen3")
    make_head(target, tok.mask_token_id, block_size=8).save(tmp_path / "head")
    argv = ["--target", str(model_dirs["qwen3"]), "--draft", str(tmp_path / "head"), "--prompt", "hello",
            "--budget", "8", "--width", "3", "--max-new-tokens", "5", "--json"]
    assert generate.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    m = report["metrics"]
    assert report["mode"] == "tree" and report["config"]["depth"] == 7 and report["config"]["budget"] == 8
    assert 1 <= len(report["token_ids"]) <= 5 and m["new_tokens"] == len(report["token_ids"])
    assert len(m["per_depth_acceptance"]) == 7 and len(m["accept_lens"]) == m["rounds"]
    assert set(m["phase_share"]) == {"draft", "tree", "verify", "accept"} and m["tokens_per_s"] > 0
    assert isinstance(report["text"], str) and report["finish_reason"] in ("eos", "length")
    assert generate.main(argv[:4] + ["--prompt", "hello", "--mode", "ar", "--max-new-tokens", "3"]) == 0
    assert "--- ar |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="pass --draft DIR"):
        generate.main(["--target", str(model_dirs["qwen3"]), "--prompt", "hello"])
