"""Training: the loss (zero iff student == teacher; fused == reference), decoding == HF generate, the cache
round-trip, block/teacher alignment, the training mask against a per-block forward, training reduces the loss,
resume continues bit-exactly, and the exported head loads with load_draft_head. Tiny random targets built here."""
import json
import math

import numpy as np
import pytest
import torch
from conftest import tol
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

from jetspec_sglang.draft_head import load_draft_head
from jetspec_sglang.draft_head_config import read_checkpoint
from jetspec_sglang.taps import forward_with_taps
from jetspec_sglang.train.blocks import make_batch, sample_anchors
from jetspec_sglang.train.cache import CacheConfig, CacheReader, build_cache, open_cache, teacher_topk
from jetspec_sglang.train.decode import Request, decode_stream
from jetspec_sglang.train.init_head import copy_target_layers
from jetspec_sglang.train.loop import FitConfig, batch_for_step, build_head, fit, load_target_parts
from jetspec_sglang.train.loss import (SampledVocab, depth_weights, forward_kl_fused, forward_kl_ref,
                                      mix_hard_label)

F32, F64, BF16 = tol(torch.float32), tol(torch.float64), tol(torch.bfloat16)
VOCAB, MASK_ID, EOS = 96, 3, 2
LAYERS = (0, 2)


@pytest.fixture(autouse=True)
def _seeded(seed):
    return seed


def tiny_target(family: str = "qwen3"):
    torch.manual_seed(0)
    if family == "qwen3":
        cfg = Qwen3Config(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, vocab_size=VOCAB, eos_token_id=EOS, pad_token_id=EOS)
        return Qwen3ForCausalLM(cfg).eval()
    cfg = LlamaConfig(hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=3,
                      num_key_value_heads=1, head_dim=16, vocab_size=VOCAB, tie_word_embeddings=True,
                      eos_token_id=EOS, pad_token_id=EOS)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture
def tiny_run(tmp_path):
    """A saved tiny target, a synthetic responses.jsonl and its cache (shared by the fit tests)."""
    model = tiny_target()
    with torch.no_grad():
        model.model.norm.weight.fill_(8.0)  # sharp teacher distributions, so the KL has something to learn
    model_dir = tmp_path / "target"
    model.save_pretrained(model_dir)
    gen = torch.Generator().manual_seed(1)
    lines = []
    for i in range(10):
        p, n = int(torch.randint(4, 9, (1,), generator=gen)), int(torch.randint(6, 20, (1,), generator=gen))
        ids = torch.randint(4, VOCAB, (p + n,), generator=gen).tolist()
        lines.append(json.dumps({"key": f"syn/{i}@t0", "id": f"syn/{i}", "dataset": "syn", "split": "train",
                                 "temperature": 0.0, "prompt_ids": ids[:p], "response_ids": ids[p:],
                                 "finished": False}))
    (tmp_path / "responses.jsonl").write_text("\n".join(lines) + "\n")
    cache_dir = tmp_path / "cache"
    build_cache(CacheConfig(model=str(model_dir), responses=str(tmp_path / "responses.jsonl"), out_dir=str(cache_dir),
                            layer_ids=LAYERS, top_k=8, held_out_percent=20))
    return dict(model=model, model_dir=model_dir, cache_dir=cache_dir, tmp=tmp_path)


def fit_config(run, name: str, **kw) -> FitConfig:
    args = dict(cache_dir=str(run["cache_dir"]), out_dir=str(run["tmp"] / name), model=str(run["model_dir"]),
                num_layers=1, intermediate_size=48, num_heads=4, num_kv_heads=2, head_dim=8, block_size=4,
                mask_token_id=MASK_ID, steps=12, seqs_per_step=3, anchors_per_seq=4, lr=3e-3, warmup_steps=2,
                log_every=2, ckpt_every=4, chunk=7, init="random")
    return FitConfig(**{**args, **kw})


# --- loss ------------------------------------------------------------------------------------------------------------
def test_forward_kl_is_zero_iff_student_equals_teacher():
    z_V = torch.tensor([2.0, 1.0, 0.5, -1.0, -3.0, 0.0], dtype=torch.float64)
    logp, ids, rest = teacher_topk(z_V[None], top_k=6)  # the full distribution: rest is empty
    assert rest.item() == float("-inf")
    kl = lambda s: forward_kl_ref(s[None], logp.double(), ids.long(), rest.double()).item()  # noqa: E731
    assert abs(kl(z_V)) < 1e-12
    assert abs(kl(z_V + 4.0)) < 1e-12  # a logit shift is the same distribution
    for j in range(6):
        bumped = z_V.clone()
        bumped[j] += 0.3
        assert kl(bumped) > 1e-4
    # top-2 + rest: the KL of the coarsened distributions, zero iff the top-2 and the rest mass agree
    logp2, ids2, rest2 = teacher_topk(z_V[None], top_k=2)
    kl2 = lambda s: forward_kl_ref(s[None], logp2.double(), ids2.long(), rest2.double()).item()  # noqa: E731
    assert abs(kl2(z_V)) < 1e-12
    inside_rest = z_V.clone()
    inside_rest[[2, 3]] = torch.logsumexp(z_V[[2, 3]], 0) - torch.log(torch.tensor(2.0, dtype=torch.float64))
    assert abs(kl2(inside_rest)) < 1e-12  # moving mass inside the rest bucket is invisible by construction
    moved = z_V.clone()
    moved[0] -= 0.5
    assert kl2(moved) > 1e-4


def test_forward_kl_matches_a_direct_kl_when_the_teacher_is_full():
    p_logits, q_logits = torch.randn(5, 11, dtype=torch.float64), torch.randn(5, 11, dtype=torch.float64)
    logp, ids, rest = teacher_topk(p_logits, top_k=11)
    want = torch.nn.functional.kl_div(q_logits.log_softmax(-1), p_logits.log_softmax(-1), log_target=True,
                                      reduction="none").sum(-1)
    torch.testing.assert_close(forward_kl_ref(q_logits, logp.double(), ids.long(), rest.double()), want, **F64)


@pytest.mark.parametrize("top_k", [4, 40])
def test_fused_loss_matches_reference_value_and_gradient(top_k):
    n, m, v = 13, 24, 40
    hidden = (torch.randn(n, m) * 2).requires_grad_()
    weight = torch.randn(v, m) / m ** 0.5
    logp, ids, rest = teacher_topk(torch.randn(n, v) * 2, top_k)
    kl_f, argmax_f = forward_kl_fused(hidden, weight, logp, ids.long(), rest, chunk=5)
    (kl_f * torch.arange(n)).sum().backward()
    grad_f, hidden.grad = hidden.grad.clone(), None
    logits = (hidden.to(torch.bfloat16) @ weight.to(torch.bfloat16).T).float()  # the fused path's matmul
    kl_r = forward_kl_ref(logits, logp, ids.long(), rest)
    (kl_r * torch.arange(n)).sum().backward()
    torch.testing.assert_close(kl_f, kl_r.detach(), **F32)
    assert torch.equal(argmax_f, logits.argmax(-1))
    torch.testing.assert_close(grad_f, hidden.grad, **BF16)


def _kl_and_grad(hidden, weight, logp, ids, rest, **kw):
    hidden = hidden.detach().clone().requires_grad_()
    kl, argmax = forward_kl_fused(hidden, weight, logp, ids, rest, chunk=5, **kw)
    kl.sum().backward()
    return kl.detach(), argmax, hidden.grad


def test_sampled_vocab_columns_hold_every_teacher_token_and_weigh_the_tail():
    vocab = SampledVocab(torch.tensor([0, 7]), tail_samples=5, vocab_size=30)
    ids = torch.tensor([[2, 9], [9, 29]])
    cols, weight, local = vocab.columns(ids, torch.Generator().manual_seed(0))
    assert torch.equal(cols[local], ids)  # the teacher's top-K are computed, at these columns
    assert cols.unique().numel() == cols.numel() == 5 + 5  # exact {0, 7, 2, 9, 29} + 5 distinct tail draws
    assert torch.equal(weight[:5], torch.ones(5)) and torch.allclose(weight[5:], torch.full((5,), 25 / 5))
    assert float(weight.sum()) == pytest.approx(30)  # the weights stand for the whole vocabulary
    with pytest.raises(ValueError, match="--tail-samples 0"):
        SampledVocab(torch.tensor([0]), tail_samples=0, vocab_size=30)


def test_sampled_vocab_with_the_whole_tail_is_the_full_loss():
    n, m, v = 11, 16, 60
    hidden, weight = torch.randn(n, m) * 2, torch.randn(v, m) / m ** 0.5
    logp, ids, rest = teacher_topk(torch.randn(n, v) * 2, 6)
    full = _kl_and_grad(hidden, weight, logp, ids.long(), rest)
    every = _kl_and_grad(hidden, weight, logp, ids.long(), rest,
                         vocab=SampledVocab(torch.tensor([1, 5]), tail_samples=v, vocab_size=v))
    torch.testing.assert_close(every[0], full[0], **BF16)
    assert torch.equal(every[1], full[1])
    torch.testing.assert_close(every[2], full[2], **BF16)


def test_sampled_vocab_estimate_centres_on_the_full_loss():
    """A quarter of the tail per draw: the mean over draws of KL and of the gradient approach the full-vocabulary
    values (the estimate is consistent), and the rest mass is where the spread comes from."""
    n, m, v = 8, 16, 400
    hidden, weight = torch.randn(n, m), torch.randn(v, m) / m ** 0.5
    logp, ids, rest = teacher_topk(torch.randn(n, v) * 3, 8)
    kl_full, _, grad_full = _kl_and_grad(hidden, weight, logp, ids.long(), rest)
    vocab = SampledVocab(torch.arange(40), tail_samples=90, vocab_size=v)
    gen = torch.Generator().manual_seed(1)
    draws = [_kl_and_grad(hidden, weight, logp, ids.long(), rest, vocab=vocab, generator=gen) for _ in range(300)]
    kl_mean = torch.stack([d[0] for d in draws]).mean(0)
    grad_mean = torch.stack([d[2] for d in draws]).mean(0)
    torch.testing.assert_close(kl_mean, kl_full, rtol=0.03, atol=0.01)
    cos = torch.nn.functional.cosine_similarity(grad_mean.flatten(), grad_full.flatten(), dim=0)
    assert cos > 0.995, cos
    assert torch.stack([d[0] for d in draws]).std(0).max() > 0  # the draws do differ


def test_hard_mix_teacher_moves_mass_to_the_argmax():
    torch.testing.assert_close(mix_hard_label(torch.tensor([[0.6, 0.4]]).log(), 0.5)[0].exp(),
                               torch.tensor([[0.8, 0.2]]))
    logp, ids, rest = teacher_topk(torch.randn(6, 30, dtype=torch.float64) * 2, 5)
    mixed, mixed_rest = mix_hard_label(logp.double(), 0.3, rest.double())
    torch.testing.assert_close(mixed_rest, rest.double() + math.log1p(-0.3), **F64)
    mass = mixed.exp().sum(-1) + mixed_rest.exp()
    torch.testing.assert_close(mass, torch.ones(6, dtype=torch.float64), **F32)  # still a distribution with the rest
    assert torch.equal(mixed.argmax(-1), logp.argmax(-1))
    same, same_rest = mix_hard_label(logp.double(), 0.0, rest.double())
    assert torch.equal(same, logp.double()) and torch.equal(same_rest, rest.double())


def test_hard_mix_gradient_is_kl_plus_cross_entropy_on_the_argmax():
    """KL(mix || q) has the gradient of (1 - lam) KL(p || q) + lam CE(argmax p, q) (loss.mix_hard_label), on the
    top-K + rest format the fit uses."""
    lam, n, v = 0.4, 7, 25
    logits = torch.randn(n, v, dtype=torch.float64, requires_grad=True)
    logp, ids, rest = teacher_topk(torch.randn(n, v, dtype=torch.float64) * 2, 6)
    logp, ids, rest = logp.double(), ids.long(), rest.double()
    mixed, mixed_rest = mix_hard_label(logp, lam, rest)
    forward_kl_ref(logits, mixed, ids, mixed_rest).sum().backward()
    got, logits.grad = logits.grad.clone(), None
    kl = forward_kl_ref(logits, logp, ids, rest)
    ce = torch.nn.functional.cross_entropy(logits, ids[:, 0], reduction="none")
    ((1 - lam) * kl + lam * ce).sum().backward()
    torch.testing.assert_close(got, logits.grad, **F64)


def test_depth_weights():
    assert torch.equal(depth_weights(3, None), torch.ones(3))
    torch.testing.assert_close(depth_weights(3, 1.0), torch.tensor([1.0, 0.36787944, 0.13533528]))


# --- decoding --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["qwen3", "llama"])
def test_continuous_decoding_equals_hf_generate(family):
    model = tiny_target(family)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(4, VOCAB, (int(torch.randint(3, 12, (1,), generator=gen)),), generator=gen).tolist()
               for _ in range(7)]
    outs = {c.key: c for c in decode_stream(model, [Request(str(i), p) for i, p in enumerate(prompts)], num_slots=3,
                                            max_new_tokens=9, eos_token_id=EOS, max_prompt_len=16)}
    assert sorted(outs) == [str(i) for i in range(7)]
    for i, p in enumerate(prompts):
        ref = model.generate(torch.tensor([p]), max_new_tokens=9, do_sample=False, eos_token_id=EOS,
                             pad_token_id=EOS)[0, len(p):].tolist()
        got = outs[str(i)]
        assert got.response_ids == ref[:len(got.response_ids)]
        assert got.finished == (got.response_ids[-1] == EOS)
        assert got.finished or len(got.response_ids) == 9


def test_sampled_decoding_does_not_depend_on_the_batch():
    model = tiny_target()
    reqs = [Request(f"r{i}", [5 + i, 7, 9], temperature=1.0) for i in range(5)]
    run = lambda rs, slots: {c.key: c.response_ids for c in decode_stream(  # noqa: E731
        model, rs, num_slots=slots, max_new_tokens=6, eos_token_id=EOS, seed=3)}
    assert run(reqs, 4) == run(reqs[::-1], 2)


# --- cache and blocks ------------------------------------------------------------------------------------------------
def test_cache_round_trip(tiny_run):
    reader = CacheReader(tiny_run["cache_dir"])
    records = [json.loads(line) for line in (tiny_run["tmp"] / "responses.jsonl").read_text().splitlines()]
    assert len(reader.rows) == len(records) and reader.layer_ids == list(LAYERS)
    assert len(reader.train_indices()) + len(reader.held_out_indices()) == len(records)
    model = AutoModelForCausalLM.from_pretrained(tiny_run["model_dir"], dtype=torch.bfloat16).eval()  # as `cache`
    for i in (0, 7):
        seq, rec = reader.sequence(i), records[i]
        ids = rec["prompt_ids"] + rec["response_ids"]
        assert seq["tokens_S"].tolist() == ids and seq["resp_start"] == len(rec["prompt_ids"])
        with torch.no_grad():
            out, taps = forward_with_taps(model.model, LAYERS, torch.tensor([ids]))
        assert torch.equal(seq["taps_SF"], taps[0])
        logits = out.last_hidden_state[0, seq["resp_start"]:].float() @ model.lm_head.weight.float().T
        logp, tid, rest = teacher_topk(logits, 8)
        assert torch.equal(seq["teacher_ids_RK"], tid.long())
        torch.testing.assert_close(seq["teacher_logp_RK"], logp, **F32)
        torch.testing.assert_close(seq["teacher_rest_R"], rest, **F32)
        total = torch.logsumexp(torch.cat([seq["teacher_logp_RK"], seq["teacher_rest_R"][:, None]], -1), -1)
        torch.testing.assert_close(total, torch.zeros_like(total), atol=1e-5, rtol=0)  # top-K + rest = 1


def test_a_cache_set_reads_several_caches_as_one(tiny_run):
    first = CacheReader(tiny_run["cache_dir"])
    other = tiny_run["tmp"] / "cache_b"
    build_cache(CacheConfig(model=str(tiny_run["model_dir"]), responses=str(tiny_run["tmp"] / "responses.jsonl"),
                            out_dir=str(other), layer_ids=LAYERS, top_k=8, held_out_percent=50))
    both = open_cache(f"{tiny_run['cache_dir']},{other}")
    n = len(first.rows)
    second = CacheReader(other)
    assert both.train_indices() == first.train_indices() + [n + i for i in second.train_indices()]
    assert both.held_out_indices() == first.held_out_indices() + [n + i for i in second.held_out_indices()]
    assert torch.equal(both.sequence(n + 3)["taps_SF"], second.sequence(3)["taps_SF"])
    assert np.allclose(both.teacher_mass(VOCAB), first.teacher_mass(VOCAB) + second.teacher_mass(VOCAB))
    wrong = tiny_run["tmp"] / "cache_c"
    build_cache(CacheConfig(model=str(tiny_run["model_dir"]), responses=str(tiny_run["tmp"] / "responses.jsonl"),
                            out_dir=str(wrong), layer_ids=(0,), top_k=8, held_out_percent=20))
    with pytest.raises(ValueError, match="same target taps"):
        open_cache(f"{tiny_run['cache_dir']},{wrong}")


def synthetic_sequence(length: int, resp_start: int, k: int = 3) -> dict:
    """Teacher row j carries its own position resp_start + j as ids[j, 0], so alignment is readable."""
    rows = length - resp_start
    ids = torch.arange(rows)[:, None] + resp_start + torch.zeros(1, k, dtype=torch.long)
    return dict(tokens_S=torch.arange(100, 100 + length), taps_SF=torch.randn(length, 6).to(torch.bfloat16),
                teacher_logp_RK=torch.randn(rows, k), teacher_ids_RK=ids, teacher_rest_R=torch.randn(rows),
                resp_start=resp_start)


def test_block_teacher_is_the_target_distribution_at_anchor_plus_k_minus_1():
    seqs = [synthetic_sequence(12, 4), synthetic_sequence(9, 3)]
    anchors = [torch.tensor([4, 7, 10]), torch.tensor([5])]
    batch = make_batch(seqs, anchors, block_size=4, mask_token_id=MASK_ID, causal=True)
    assert batch.taps_BSF.shape == (2, 12, 6) and batch.anchors_BA.tolist() == [[4, 7, 10], [5, 5, 5]]
    assert batch.block_ids_BR[0].tolist() == [104, 3, 3, 3, 107, 3, 3, 3, 110, 3, 3, 3]
    assert batch.positions_BR[1, :4].tolist() == [5, 6, 7, 8]
    # slot (a, k) is valid iff token a + k exists; its teacher is position a + k - 1
    assert batch.valid_BAL[0].tolist() == [[True] * 3, [True] * 3, [True, False, False]]
    assert batch.valid_BAL[1].tolist() == [[True] * 3, [False] * 3, [False] * 3]  # padded anchors carry no loss
    for b, a_list in ((0, [4, 7, 10]), (1, [5])):
        for ai, a in enumerate(a_list):
            for k in range(1, 4):
                if batch.valid_BAL[b, ai, k - 1]:
                    assert int(batch.teacher_ids_BALK[b, ai, k - 1, 0]) == a + k - 1


def test_sample_anchors_stay_inside_the_response_with_a_token_after_them():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = sample_anchors(5, 30, 8, gen)
        assert len(a) == 8 and len(set(a.tolist())) == 8 and int(a.min()) >= 5 and int(a.max()) <= 28
    assert sample_anchors(5, 9, 10, gen).tolist() == [5, 6, 7]
    with pytest.raises(ValueError, match="no anchor"):
        sample_anchors(5, 6, 3, gen)


@pytest.mark.parametrize("head_type", ["causal", "bidirectional"])
def test_training_mask_keeps_context_strictly_before_the_anchor(tiny_run, head_type):
    """Every block of the many-block training forward equals the inference forward of that block alone, whose
    context is exactly the taps of positions < anchor (so nothing at or after the anchor leaks in)."""
    cfg = fit_config(tiny_run, "unused", head_type=head_type)
    reader = CacheReader(tiny_run["cache_dir"])
    target = load_target_parts(str(tiny_run["model_dir"]))
    head = build_head(cfg, target, reader).double()
    batch = batch_for_step(cfg, reader, reader.train_indices(), step=1)
    with torch.no_grad():
        embeds_BRM = target.embed_tokens(batch.block_ids_BR).double()
        hidden_BRM = head.forward_blocks(head.project_context(batch.taps_BSF.double()), embeds_BRM,
                                         batch.positions_BR, batch.allowed_B1RK)
        b, a = batch.anchors_BA.shape
        for bi in range(b):
            for ai in range(a):
                anchor = int(batch.anchors_BA[bi, ai])
                cache = head.new_cache(1)
                head.append_context(cache, batch.taps_BSF[bi:bi + 1, :anchor].double())
                rows = slice(ai * cfg.block_size, (ai + 1) * cfg.block_size)
                alone = head.forward_block(cache, embeds_BRM[bi:bi + 1, rows])
                torch.testing.assert_close(hidden_BRM[bi:bi + 1, rows], alone, **F64)


# --- the loop --------------------------------------------------------------------------------------------------------
def test_a_few_steps_reduce_the_loss(tiny_run):
    cfg = fit_config(tiny_run, "run", steps=30, log_every=5, ckpt_every=30, norm_init=1.0)
    fit(cfg)
    lines = [json.loads(line) for line in (tiny_run["tmp"] / "run" / "metrics.jsonl").read_text().splitlines()]
    metrics = [r for r in lines if "loss" in r]
    assert len(metrics) == 6 and len(metrics[0]["agree"]) == 3
    assert metrics[-1]["loss"] < 0.7 * metrics[0]["loss"]
    held = [r for r in lines if "heldout" in r]  # the end of the run scores the held-out sequences (full vocab)
    assert [r["step"] for r in held] == [0, 30] and len(held[0]["heldout"]["agree"]) == 3
    assert held[0]["supervised_positions"] == 0 < held[1]["supervised_positions"]
    assert held[1]["heldout"]["kl_mean"] < held[0]["heldout"]["kl_mean"]
    assert (tiny_run["tmp"] / "run" / "curve.png").stat().st_size > 0


def test_resume_continues_from_the_same_step(tiny_run):
    whole = fit_config(tiny_run, "whole")
    fit(whole)
    parts = fit_config(tiny_run, "parts", max_steps_this_run=5)
    fit(parts)
    state = torch.load(tiny_run["tmp"] / "parts" / "ckpt" / "state.pt", weights_only=False)
    assert state["step"] == 5 and not (tiny_run["tmp"] / "parts" / "head").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        fit(parts)
    fit(fit_config(tiny_run, "parts"), resume=True)
    _, want = read_checkpoint(tiny_run["tmp"] / "whole" / "head")
    _, got = read_checkpoint(tiny_run["tmp"] / "parts" / "head")
    assert all(torch.equal(want[k], got[k]) for k in want)
    lines = (tiny_run["tmp"] / "parts" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]
    assert steps == [2, 4, 5, 6, 8, 10, 12]  # + one where the first run stopped
    held = [json.loads(line) for line in lines if "heldout" in json.loads(line)]
    whole_held = [json.loads(line) for line in (tiny_run["tmp"] / "whole" / "metrics.jsonl").read_text().splitlines()
                  if "heldout" in json.loads(line)]
    assert held == whole_held  # the resumed run counts the same supervised positions and scores the same head
    with pytest.raises(ValueError, match="same arguments"):
        fit(fit_config(tiny_run, "parts", lr=1e-2), resume=True)


@pytest.mark.parametrize("head_type", ["causal", "bidirectional"])
def test_saved_head_loads_with_load_draft_head(tiny_run, head_type):
    fit(fit_config(tiny_run, head_type, head_type=head_type, steps=2))
    head_dir = tiny_run["tmp"] / head_type / "head"
    raw = json.loads((head_dir / "config.json").read_text())
    assert raw["dtype"] == "bfloat16" and raw["dflash_config"]["causal_head"] == (head_type == "causal")
    assert raw["dflash_config"]["target_layer_ids"] == list(LAYERS)
    assert raw["dflash_config"]["mask_token_id"] == MASK_ID and raw["block_size"] == 4
    head = load_draft_head(head_dir, target_config=tiny_run["model"].config)
    state = torch.load(tiny_run["tmp"] / head_type / "ckpt" / "state.pt", weights_only=False)
    for name, p in head.state_dict().items():
        torch.testing.assert_close(p, state["head"][name].to(torch.bfloat16).float(), rtol=0, atol=0)


def test_target_layer_init_reads_the_deepest_tap_with_the_next_layer(tiny_run):
    cfg = fit_config(tiny_run, "unused", init="target-layers", target_layer_ids=(0,), intermediate_size=64)
    reader = CacheReader(tiny_run["cache_dir"])
    target = load_target_parts(str(tiny_run["model_dir"]))
    head = build_head(cfg, target, reader)  # taps (0,) -> the draft layer copies target layer 1
    source = target.layers[1]
    for name in ("self_attn.q_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"):
        assert torch.equal(head.layers[0].get_submodule(name).weight, source.get_submodule(name).weight.float())
    x_SM = reader.sequence(0)["taps_SF"][:, :32].float()  # layer-0 output = the residual stream entering layer 1
    with torch.no_grad():
        ours = head.layers[0].self_attn.k_proj(head.project_context(x_SM))
        theirs = source.self_attn.k_proj(source.input_layernorm(x_SM.to(torch.bfloat16))).float()
    torch.testing.assert_close(ours, theirs, **BF16)  # context K (before k_norm) = the copied layer's own K
    random_head = build_head(fit_config(tiny_run, "x", intermediate_size=64), target, reader)  # taps (0, 2)
    with pytest.raises(ValueError, match="would copy target layers"):
        copy_target_layers(random_head, target.layers, target.final_norm_weight_M, x_SM.repeat(1, 2))
    with pytest.raises(ValueError, match="--intermediate-size"):
        build_head(fit_config(tiny_run, "x", init="target-layers", target_layer_ids=(0,)), target, reader)


def test_fit_starts_from_a_head_folder_and_checks_its_taps(tiny_run):
    fit(fit_config(tiny_run, "first", steps=2))
    first = tiny_run["tmp"] / "first" / "head"
    cfg = fit_config(tiny_run, "second", init_from=str(first))
    reader = CacheReader(tiny_run["cache_dir"])
    target = load_target_parts(str(tiny_run["model_dir"]))
    head = build_head(cfg, target, reader)
    _, want = read_checkpoint(first)
    assert all(torch.equal(head.state_dict()[k], want[k].float()) for k in want)
    with pytest.raises(ValueError, match="--target-layer-ids 0,2"):
        build_head(fit_config(tiny_run, "third", init_from=str(first), target_layer_ids=(0,)), target, reader)


def test_a_grown_head_computes_what_its_source_did_and_then_trains_every_layer(tiny_run):
    """--grow-layers appends identity layers: step 0 of the grown head gives the source head's hidden states
    exactly (so the curve continues, not restarts); after a fit every new weight has moved and the exported head
    has the extra layers in config.json."""
    fit(fit_config(tiny_run, "first", steps=2))
    first = tiny_run["tmp"] / "first" / "head"
    reader = CacheReader(tiny_run["cache_dir"])
    target = load_target_parts(str(tiny_run["model_dir"]))
    source = build_head(fit_config(tiny_run, "a", init_from=str(first)), target, reader).double()
    grown = build_head(fit_config(tiny_run, "b", init_from=str(first), grow_layers=2), target, reader).double()
    assert len(grown.layers) == len(source.layers) + 2
    cfg = fit_config(tiny_run, "unused")
    batch = batch_for_step(cfg, reader, reader.train_indices(), step=1)
    with torch.no_grad():
        embeds_BRM = target.embed_tokens(batch.block_ids_BR).double()
        outs = [h.forward_blocks(h.project_context(batch.taps_BSF.double()), embeds_BRM, batch.positions_BR,
                                 batch.allowed_B1RK) for h in (source, grown)]
    torch.testing.assert_close(outs[1], outs[0], **F64)
    fit(fit_config(tiny_run, "grown", steps=4, init_from=str(first), grow_layers=1))
    config, tensors = read_checkpoint(tiny_run["tmp"] / "grown" / "head")
    assert config.num_hidden_layers == len(source.layers) + 1
    new = len(source.layers)
    assert tensors[f"layers.{new}.self_attn.o_proj.weight"].abs().sum() > 0  # was zero, has learned
    assert tensors[f"layers.{new}.mlp.down_proj.weight"].abs().sum() > 0
    with pytest.raises(ValueError, match="--grow-layers 1: needs --init-from"):
        fit_config(tiny_run, "c", grow_layers=1)


def test_a_head_continued_as_another_head_type_is_exported_as_that_type(tiny_run):
    """fit --init-from a causal head with --head-type bidirectional trains with bidirectional block masks, so the
    exported config must say bidirectional (it said causal: SGLang would then serve it with the wrong mask)."""
    fit(fit_config(tiny_run, "first", steps=2))
    first = tiny_run["tmp"] / "first" / "head"
    assert read_checkpoint(first)[0].causal_head
    fit(fit_config(tiny_run, "bidi", steps=2, init_from=str(first), head_type="bidirectional"))
    config = read_checkpoint(tiny_run["tmp"] / "bidi" / "head")[0]
    assert not config.causal_head and config.num_hidden_layers == 1
    fit(fit_config(tiny_run, "same", steps=2, init_from=str(first)))
    assert read_checkpoint(tiny_run["tmp"] / "same" / "head")[0].causal_head


def test_a_fit_continued_from_a_head_continues_its_curve(tiny_run):
    """fit exports training_state.json + metrics.jsonl beside the head; `--init-from` that head (a fresh clone has
    nothing else) counts supervised positions on from where the first run ended."""
    fit(fit_config(tiny_run, "first", steps=4))
    first = tiny_run["tmp"] / "first" / "head"
    state = json.loads((first / "training_state.json").read_text())
    assert state["step"] == 4 and state["supervised_positions"] > 0 and state["trainer"] == "fit"
    assert (first / "metrics.jsonl").read_text() == (tiny_run["tmp"] / "first" / "metrics.jsonl").read_text()
    fit(fit_config(tiny_run, "second", steps=4, init_from=str(first)))
    lines = [json.loads(x) for x in (tiny_run["tmp"] / "second" / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in lines if "heldout" in r]
    assert held[0]["supervised_positions"] == state["supervised_positions"]  # the first point is where it ended
    # ... and scores what the first run scored last (up to the export's bf16 rounding of the weights)
    assert held[0]["heldout"]["kl_mean"] == pytest.approx(state["final"]["heldout"]["kl_mean"], rel=0.02)
    second = json.loads((tiny_run["tmp"] / "second" / "head" / "training_state.json").read_text())
    assert second["supervised_positions"] == 2 * state["supervised_positions"]  # same batches, same count
    assert second["continued_from"]["supervised_positions"] == state["supervised_positions"]


def test_fit_with_a_hard_mix_trains(tiny_run):
    """--hard-mix trains (the loss to the mixed teacher falls, and so does the held-out KL to the target itself) and
    is refused outside [0, 1)."""
    fit(fit_config(tiny_run, "hard", steps=30, log_every=5, ckpt_every=30, norm_init=1.0, hard_mix=0.5))
    lines = [json.loads(line) for line in (tiny_run["tmp"] / "hard" / "metrics.jsonl").read_text().splitlines()]
    metrics, held = [r for r in lines if "loss" in r], [r["heldout"] for r in lines if "heldout" in r]
    assert metrics[-1]["loss"] < 0.7 * metrics[0]["loss"]
    assert held[-1]["kl_mean"] < held[0]["kl_mean"]
    with pytest.raises(ValueError, match="--hard-mix 1.0: must be in"):
        fit_config(tiny_run, "bad", hard_mix=1.0)


def test_fit_with_a_sampled_vocabulary_reduces_the_loss(tiny_run):
    """The sampled-vocabulary step (a quarter of the tiny vocabulary exact, 8 tail draws) trains as the full one."""
    cfg = fit_config(tiny_run, "sampled", steps=30, log_every=5, ckpt_every=30, norm_init=1.0, exact_vocab=24,
                     tail_samples=8)
    fit(cfg)
    lines = [json.loads(line) for line in (tiny_run["tmp"] / "sampled" / "metrics.jsonl").read_text().splitlines()]
    metrics = [r for r in lines if "loss" in r]
    assert metrics[-1]["loss"] < 0.7 * metrics[0]["loss"]
