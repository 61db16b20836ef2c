"""Online training (the GPU path, run here on CPU through the same code): batching, device anchors, the teacher rows,
the full-vocabulary loss against a direct KL, training reduces the loss and exports a loadable head, --init-from
continues the step count and the curve, held-out tree accept lengths on hand-made drafts, batched generation."""
import json

import pytest
import torch
from conftest import tol
from test_train import MASK_ID, VOCAB, tiny_target

from jetspec_sglang.draft_head import load_draft_head
from jetspec_sglang.train.generate_batched import BatchedGenerateConfig, _responses, generate_batched, plan_batches
from jetspec_sglang.train.heldout import tree_accept_lengths
from jetspec_sglang.train.online import OnlineConfig, train_online
from jetspec_sglang.train.online_step import HeadBlocks, online_step, sample_anchors_device
from jetspec_sglang.train.signals import gather_rows, pad_sequences, target_forward, teacher_rows

F32 = tol(torch.float32)
EOS_TINY = 2  # <|im_end|> of the tiny targets (models.TINY_SPECIALS)


def _records(n: int, seed: int = 1) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p, r = int(torch.randint(4, 9, (1,), generator=gen)), int(torch.randint(6, 20, (1,), generator=gen))
        ids = torch.randint(4, VOCAB, (p + r,), generator=gen).tolist()
        out.append({"key": f"syn/{i}@t0", "id": f"syn/{i}", "dataset": "syn", "temperature": 0.0,
                    "prompt_ids": ids[:p], "response_ids": ids[p:], "finished": False})
    return out


@pytest.fixture
def tiny_online(tmp_path):
    model = tiny_target()
    with torch.no_grad():
        model.model.norm.weight.fill_(8.0)  # sharp teacher distributions
    model.save_pretrained(tmp_path / "target")
    data = tmp_path / "responses.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records(24)))
    return dict(model=model, model_dir=str(tmp_path / "target"), data=str(data), tmp=tmp_path)


def online_config(run, name: str, **kw) -> OnlineConfig:
    args = dict(data=(run["data"],), out_dir=str(run["tmp"] / name), model=run["model_dir"], num_layers=1,
                intermediate_size=48, num_heads=4, num_kv_heads=2, head_dim=8, block_size=4, mask_token_id=MASK_ID,
                target_layer_ids=(0,), steps=16, seqs_per_step=4, anchors_per_seq=6, lr=3e-3, warmup_steps=2,
                log_every=4, eval_every=8, ckpt_every=8, held_out_percent=20, eval_sequences=4, init="random",
                max_seq_len=64)
    return OnlineConfig(**{**args, **kw})


def test_pad_sequences_and_teacher_rows_follow_their_examples():
    batch = pad_sequences([{"prompt_ids": [5, 6], "response_ids": [7, 8, 9]}], max_len=4)
    assert batch.tokens_BS.tolist() == [[5, 6, 7, 8]] and batch.lengths_B.tolist() == [4]
    assert batch.resp_start_B.tolist() == [2]
    rows, valid = teacher_rows(torch.zeros(1, 6, 2), torch.tensor([[3]]), torch.tensor([6]), depth=3)
    assert rows.tolist() == [[[3, 4, 5]]] and valid.tolist() == [[[True, True, False]]]
    with pytest.raises(ValueError, match="max_len"):
        pad_sequences([{"key": "k", "prompt_ids": [1, 2, 3], "response_ids": [4, 5]}], max_len=4)


def test_device_anchors_are_distinct_and_inside_the_response():
    gen = torch.Generator().manual_seed(0)
    for trial in range(30):
        recs = _records(5, seed=trial)
        batch = pad_sequences(recs, max_len=64)
        anchors, ok = sample_anchors_device(batch, 8, gen)
        for b in range(len(recs)):
            real = anchors[b][ok[b]].tolist()
            lo, hi = int(batch.resp_start_B[b]), int(batch.lengths_B[b]) - 2
            assert all(lo <= a <= hi for a in real) and len(set(real)) == len(real)
            assert len(real) == min(8, hi - lo + 1)
            assert anchors[b].tolist() == sorted(anchors[b].tolist())


def test_online_loss_is_the_full_vocabulary_kl_to_the_target_at_anchor_plus_k_minus_1(tiny_online):
    cfg = online_config(tiny_online, "x")
    from jetspec_sglang.train.online import build_head

    target = tiny_online["model"].to(torch.float32)
    head, _ = build_head(cfg, target, [], torch.device("cpu"))
    batch = pad_sequences(_records(3), max_len=64)
    res = online_step(HeadBlocks(head), target, [0], batch, 5, torch.ones(3), torch.Generator().manual_seed(0),
                      autocast=False)
    # the same quantity by hand: teacher rows from a plain forward, student logits from the head
    anchors, ok = sample_anchors_device(batch, 5, torch.Generator().manual_seed(0))
    taps, logits = target_forward(target, [0], batch.tokens_BS)
    rows, valid = teacher_rows(logits, anchors, batch.lengths_B, 3)
    valid &= ok[:, :, None]
    p = torch.log_softmax(gather_rows(logits, rows, valid).float(), -1)
    for (b, a, k) in valid.nonzero().tolist()[:5]:
        direct = torch.log_softmax(logits[b, int(anchors[b, a]) + k].float(), -1)
        torch.testing.assert_close(p[valid[:b].sum() + valid[b, :a].sum() + valid[b, a, :k].sum()], direct, **F32)
    assert res.loss.item() > 0 and res.count_L.sum() == valid.sum()
    assert res.loss.requires_grad


def test_online_hard_mix_changes_the_loss_not_the_agreement(tiny_online):
    """--hard-mix on the online path: the KL is to the mixed teacher (another, still finite and positive value),
    the agreement counts are the target argmax's either way."""
    from jetspec_sglang.train.online import build_head

    target = tiny_online["model"].to(torch.float32)
    head, _ = build_head(online_config(tiny_online, "x"), target, [], torch.device("cpu"))
    batch = pad_sequences(_records(3), max_len=64)
    plain, mixed = (online_step(HeadBlocks(head), target, [0], batch, 5, torch.ones(3),
                                torch.Generator().manual_seed(0), autocast=False, hard_mix=x) for x in (0.0, 0.5))
    assert torch.isfinite(mixed.loss) and mixed.loss.item() > 0
    assert abs(mixed.loss.item() - plain.loss.item()) > 1e-4
    assert torch.equal(mixed.agree_sum_L, plain.agree_sum_L) and torch.equal(mixed.count_L, plain.count_L)


def test_online_training_reduces_the_loss_and_exports_a_loadable_head(tiny_online):
    out = train_online(online_config(tiny_online, "run"))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < losses[0]
    assert any("heldout" in r for r in recs) and (out / "curve.png").exists()
    state = json.loads((out / "head" / "training_state.json").read_text())
    assert state["step"] == 16 and state["supervised_positions"] > 0
    head = load_draft_head(out / "head", target_config=tiny_online["model"].config)
    assert head.config.block_size == 4 and head.config.causal_head


def test_init_from_continues_the_step_count_and_the_curve(tiny_online):
    first = train_online(online_config(tiny_online, "a", steps=8))
    second = train_online(online_config(tiny_online, "b", steps=8, init_from=str(first / "head")))
    state = json.loads((second / "head" / "training_state.json").read_text())
    assert state["step"] == 16
    steps = [json.loads(x)["step"] for x in (second / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] <= 8 and steps[-1] == 16  # the first run's lines, then the continuation's
    with pytest.raises(FileExistsError, match="--resume"):
        train_online(online_config(tiny_online, "a", steps=8))


def test_tree_accept_lengths_walk_the_continuation_through_the_tree():
    depth, width = 4, 2
    cont = torch.tensor([[11, 12, 13, 14], [11, 12, 13, 14], [11, 12, 13, 14]])
    tokens = torch.tensor([[[11, 21], [12, 22], [13, 23], [14, 24]],  # rank 1 is the continuation: all accepted
                           [[11, 21], [22, 12], [13, 23], [24, 25]],  # depth 2 only at rank 2; depth 4 missing
                           [[21, 11], [12, 22], [23, 24], [14, 24]]])  # depth 3 missing
    logp = torch.log(torch.tensor([0.6, 0.3])).expand(3, depth, width).contiguous()
    trusted = torch.ones(3, depth, dtype=torch.bool)
    roots = torch.tensor([5, 5, 5])
    chain = tree_accept_lengths(tokens, logp, roots, cont, trusted, depth + 1, 1, depth)
    assert chain.tolist() == [5, 2, 1]
    tree = tree_accept_lengths(tokens, logp, roots, cont, trusted, 64, width, depth)
    assert tree.tolist() == [5, 4, 3]
    trusted[0, 2] = False  # a flipped near-tie ends the trusted continuation at depth 3
    assert tree_accept_lengths(tokens, logp, roots, cont, trusted, 64, width, depth).tolist()[0] == 3


def test_batched_generation_writes_train_records_and_resumes(tmp_path):
    from jetspec_sglang.models import prepare_model

    assert _responses(torch.tensor([[9, 9, 4, 2, 7], [9, 9, 5, 6, 8]]), 2, eos=2) == [([4, 2], True),
                                                                                      ([5, 6, 8], False)]
    reqs = [{"key": f"r{i}@t0", "id": f"r{i}", "dataset": "syn", "temperature": 0.0, "prompt_ids": [1, 5 + i, 7]}
            for i in range(5)] + [{"key": "s@t0.7", "id": "s", "dataset": "syn", "temperature": 0.7,
                                   "prompt_ids": [1, 9]}]
    assert [len(b) for b in plan_batches(reqs, 2)] == [2, 2, 1, 1]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({**r, "split": "train"}) + "\n" for r in reqs))
    cfg = BatchedGenerateConfig(model=str(prepare_model("tiny-qwen3")), prompts_file=str(prompts),
                                out_dir=str(tmp_path / "gen"), device="cpu", batch_size=4, max_new_tokens=6)
    path = generate_batched(cfg)
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted(r["key"] for r in recs) == sorted(r["key"] for r in reqs)
    assert all(r["split"] == "train" and 1 <= len(r["response_ids"]) <= 6 for r in recs)
    assert all(r["finished"] == (r["response_ids"][-1] == EOS_TINY) for r in recs)
    generate_batched(cfg)  # every key is done: nothing is appended
    assert len(path.read_text().splitlines()) == len(recs)
    prompts.write_text(json.dumps({**reqs[0], "split": "eval"}) + "\n")
    with pytest.raises(ValueError, match="train-split"):
        generate_batched(cfg)

