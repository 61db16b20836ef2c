"""Natural training text (train/natural.py): the datasets' own answers to train-split prompts, in the responses.jsonl
layout the online trainer reads; never an evaluation prompt; kept out of the held-out greedy scores. Real
datasets (the packaged GSM8K, HumanEval, ShareGPT) and the real SmolLM2 tokenizer."""
import json

import pytest

from jetspec_sglang.data.splits import load_prompts
from jetspec_sglang.train.cache import is_held_out
from jetspec_sglang.train.natural import NaturalConfig, parse_natural_plan, write_natural
from jetspec_sglang.train.online import OnlineConfig, split_records
from jetspec_sglang.train.regenerate import read_responses

pytestmark = pytest.mark.slow


def test_plan_parsing_names_the_fix():
    assert parse_natural_plan("sharegpt:10, gsm8k:0") == (("sharegpt", 10), ("gsm8k", 0))
    for bad, words in (("mtbench:5", "DATASET:COUNT"), ("gsm8k:x", "DATASET:COUNT"), ("gsm8k:1,gsm8k:2", "twice")):
        with pytest.raises(ValueError, match=words):
            parse_natural_plan(bad)


def test_natural_records_are_train_answers_in_the_online_layout(smollm2_dir, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    out = tmp_path / "natural.jsonl"
    cfg = NaturalConfig(model=smollm2_dir, out=str(out), plan=parse_natural_plan("gsm8k:30,humaneval:0,sharegpt:20"),
                        max_response_len=200)
    summary = write_natural(cfg)
    records = read_responses(out)
    assert summary["gsm8k"]["sequences"] == 30 and summary["sharegpt"]["sequences"] == 20
    assert summary["humaneval"]["sequences"] == len(load_prompts("humaneval", "train")) == 100
    assert sum(s["response_tokens"] for s in summary.values()) == sum(len(r["response_ids"]) for r in records)

    train_ids = {d: {r.id: r for r in load_prompts(d, "train")} for d in ("gsm8k", "humaneval", "sharegpt")}
    eval_ids = {r.id for d in ("gsm8k", "humaneval", "sharegpt") for r in load_prompts(d, "eval")}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for r in records:
        assert r["id"] in train_ids[r["dataset"]] and r["id"] not in eval_ids, r["id"]
        assert r["key"] == f"{r['id']}@natural" and r["temperature"] is None and r["source"] == "natural"
        assert len(r["response_ids"]) <= 200
        if r["finished"]:
            assert r["response_ids"][-1] == im_end
            text = tok.decode(r["response_ids"][:-1])
            assert text.strip() == train_ids[r["dataset"]][r["id"]].reference.strip()
        prompt = tok.decode(r["prompt_ids"])
        assert "<|im_start|>user" in prompt and prompt.rstrip().endswith("<|im_start|>assistant")
    gsm = next(r for r in records if r["dataset"] == "gsm8k")
    assert "<<" not in tok.decode(gsm["response_ids"]), "GSM8K calculator notes are removed"
    assert len({r["key"] for r in records}) == len(records)

    # The online trainer reads them beside regenerated records; they never enter the held-out greedy scores.
    regen = dict(key="gsm8k/3@t0", id="gsm8k/3", dataset="gsm8k", temperature=0.0, prompt_ids=records[0]["prompt_ids"],
                 response_ids=records[0]["response_ids"][:20], finished=False)
    both = tmp_path / "regen.jsonl"
    both.write_text(json.dumps(regen) + "\n")
    train, held = split_records(OnlineConfig(data=(str(out), str(both)), out_dir=str(tmp_path / "run"),
                                             model=smollm2_dir, held_out_percent=50))
    assert all(r.get("source") != "natural" for r in held)
    natural_train = {r["key"] for r in train if r.get("source") == "natural"}
    assert natural_train == {r["key"] for r in records if not is_held_out(r["key"], 50)} and natural_train
