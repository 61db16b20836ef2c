"""draft_vocab: ranking the target's tokens, the head file, the subset JETSPEC_DRAFT_VOCAB resolves to, and the
draft top-K over a subset (DraftProjection, the replay's draft_all_anchors)."""
import json
import os
import shutil

import pytest
import torch

from jetspec_sglang.config import ConfigError
from jetspec_sglang.draft_topk import DraftProjection
from jetspec_sglang.draft_vocab import (FILE, DraftVocab, DraftVocabError, count_tokens, load_draft_vocab,
                                        rank_tokens, resolve_draft_vocab, save_draft_vocab)
from jetspec_sglang.train.__main__ import main as train_main

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "jetspec_sglang", "heads", "smollm2-135m-instruct")


def test_count_and_rank():
    counts_V = count_tokens([[2, 3, 2], [], [0, 2, 3]], vocab_size=5)
    assert counts_V.tolist() == [1, 0, 3, 2, 0]
    assert rank_tokens(counts_V).tolist() == [2, 3, 0, 1, 4], "by count, ties by ascending id"
    assert rank_tokens(torch.tensor([5, 0, 7, 5])).tolist() == [2, 0, 3, 1]
    with pytest.raises(DraftVocabError, match="another vocabulary"):
        count_tokens([[1, 5]], vocab_size=5)


def test_subset_is_the_most_frequent_ids_ascending():
    vocab = DraftVocab(torch.tensor([2, 0, 3, 1]), default_size=2, source="test")
    assert vocab.subset(2).tolist() == [0, 2]
    assert vocab.subset(9).tolist() == [0, 1, 2, 3]
    with pytest.raises(DraftVocabError, match="JETSPEC_DRAFT_VOCAB"):
        vocab.subset(0)


def test_save_load_round_trip(tmp_path):
    vocab = DraftVocab(rank_tokens(torch.tensor([1, 9, 0, 4, 4])), default_size=3, source="five tokens")
    save_draft_vocab(str(tmp_path), vocab)
    back = load_draft_vocab(str(tmp_path))
    assert torch.equal(back.ranked_ids_V, vocab.ranked_ids_V) and (back.default_size, back.source) == (3, "five tokens")
    assert load_draft_vocab(str(tmp_path / "nowhere")) is None


@pytest.mark.parametrize("change,words", [
    (lambda d: d.update(ranked_ids=[0, 1, 1, 3, 4]), "not a permutation"),
    (lambda d: d.update(ranked_ids=[0, 1, 2]), "not a permutation"),
    (lambda d: d.update(format="other"), "format"),
    (lambda d: d.update(default_size=0), "default_size"),
    (lambda d: d.pop("source"), "unreadable"),
])
def test_broken_file_names_itself_and_the_fix(tmp_path, change, words):
    save_draft_vocab(str(tmp_path), DraftVocab(torch.arange(5), 2, "x"))
    raw = json.loads((tmp_path / FILE).read_text())
    change(raw)
    (tmp_path / FILE).write_text(json.dumps(raw))
    with pytest.raises(DraftVocabError) as err:
        load_draft_vocab(str(tmp_path))
    assert words in str(err.value) and FILE in str(err.value) and "draft-vocab" in str(err.value), str(err.value)


def test_unparsable_file(tmp_path):
    (tmp_path / FILE).write_text("{not json")
    with pytest.raises(DraftVocabError, match="unreadable"):
        load_draft_vocab(str(tmp_path))


def test_resolve_settings(tmp_path):
    head = str(tmp_path)
    assert resolve_draft_vocab(head, "auto", 5)[0] is None, "auto without a file: every token"
    with pytest.raises(DraftVocabError, match="train draft-vocab"):
        resolve_draft_vocab(head, "3", 5)
    save_draft_vocab(head, DraftVocab(torch.tensor([4, 1, 0, 2, 3]), default_size=2, source="x"))
    assert resolve_draft_vocab(head, "auto", 5)[0].tolist() == [1, 4]
    ids, why = resolve_draft_vocab(head, "3", 5)
    assert ids.tolist() == [0, 1, 4] and "3 of 5" in why
    assert resolve_draft_vocab(head, "full", 5)[0] is None
    assert resolve_draft_vocab(head, "5", 5)[0] is None, "a size >= V is the full vocabulary"
    with pytest.raises(DraftVocabError, match=r"JETSPEC_DRAFT_VOCAB=3: 3 draft tokens < the tree width "
                                               r"JETSPEC_TREE_WIDTH=4"):
        resolve_draft_vocab(head, "3", 5, width=4)
    assert resolve_draft_vocab(head, "3", 5, width=3)[0].tolist() == [0, 1, 4]
    with pytest.raises(DraftVocabError, match="another target"):
        resolve_draft_vocab(head, "auto", 6)
    with pytest.raises(ConfigError, match="JETSPEC_DRAFT_VOCAB"):
        resolve_draft_vocab(head, "many", 5)


def test_projection_over_a_subset_is_the_masked_log_softmax():
    g = torch.Generator().manual_seed(0)
    weight_VM, hidden_TM = torch.randn(500, 32, generator=g), torch.randn(6, 32, generator=g)
    ids_S = torch.sort(torch.randperm(500, generator=g)[:120]).values
    logprobs_TK, tokens_TK = DraftProjection.build(weight_VM, "model", rows=6, ids_S=ids_S)(hidden_TM, 4)
    logits_TV = hidden_TM @ weight_VM.T
    masked_TV = torch.full_like(logits_TV, float("-inf"))
    masked_TV[:, ids_S] = logits_TV[:, ids_S]
    want_TK, want_tokens_TK = torch.log_softmax(masked_TV, -1).topk(4, dim=-1)
    assert torch.equal(tokens_TK, want_tokens_TK), "token ids, not subset rows"
    torch.testing.assert_close(logprobs_TK, want_TK, atol=1e-5, rtol=1e-5)
    assert torch.isin(tokens_TK, ids_S).all()


def test_shipped_head_file_fits_its_config():
    vocab = load_draft_vocab(SHIPPED)
    assert vocab is not None, f"the shipped head ships {FILE}"
    with open(os.path.join(SHIPPED, "config.json")) as f:
        assert vocab.vocab_size == json.load(f)["vocab_size"]
    assert vocab.default_size < vocab.vocab_size


def test_cli_counts_the_responses(tmp_path):
    head = tmp_path / "head"
    shutil.copytree(SHIPPED, head, ignore=shutil.ignore_patterns("*.safetensors", "*.xz", FILE, "*.jsonl"))
    data = tmp_path / "responses.jsonl"
    data.write_text("\n".join(json.dumps({"response_ids": ids}) for ids in ([7, 7, 9], [9, 7, 2])) + "\n")
    assert train_main(["draft-vocab", "--head", str(head), "--data", str(data), "--default-size", "3"]) == 0
    vocab = load_draft_vocab(str(head))
    assert vocab.ranked_ids_V[:4].tolist() == [7, 9, 2, 0] and vocab.default_size == 3
    assert vocab.source.startswith("6 response tokens of responses.jsonl; 3 distinct")
