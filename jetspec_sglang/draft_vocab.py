"""The draft vocabulary: the target's tokens ranked by how often the target emits them, and the subset of the
most frequent ones the draft top-K is restricted to (FR-Spec style, arXiv 2502.14856).

The draft top-K only shapes the tree: acceptance compares draft tokens with the target's own verify logits
(verify.py), so drafting from a subset is lossless; it lowers acceptance only where the target emits a token outside
the subset. What it buys: the per-round product of the draft rows with the LM head reads S of the V rows (on this
project's CPU that read is bandwidth-bound, ~4 ms of a bf16 SmolLM2 round at S = V). The log-probs of the tree are
normalised over the subset. A head folder may ship the ranking as `draft_vocab.json` (FILE), written by
`python -m jetspec_sglang.train draft-vocab` from the target's own responses; JETSPEC_DRAFT_VOCAB picks the size.
Imports torch and config only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable

import torch

from jetspec_sglang.config import DRAFT_VOCAB_WORDS, ConfigError, parse_draft_vocab

FILE = "draft_vocab.json"
FORMAT = "jetspec-draft-vocab-1"
AUTO, FULL = DRAFT_VOCAB_WORDS  # JETSPEC_DRAFT_VOCAB: the file's default size / every token (or an integer size)


class DraftVocabError(ConfigError):
    """A draft vocabulary file or setting is unusable; the message names it and the fix."""


@dataclass(frozen=True)
class DraftVocab:
    ranked_ids_V: torch.Tensor  # int64 [V]: a permutation of range(V), most frequent first, ties by id
    default_size: int  # the size JETSPEC_DRAFT_VOCAB=auto uses (measured by the file's author)
    source: str  # what was counted, for logs and the head's README

    @property
    def vocab_size(self) -> int:
        return int(self.ranked_ids_V.numel())

    def subset(self, size: int) -> torch.Tensor:
        """The `size` most frequent token ids, int64 [S] ascending (S = min(size, V)).
        Example: ranked [2, 0, 3, 1], size 2 -> [0, 2]."""
        if size < 1:
            raise DraftVocabError(f"draft vocabulary size {size} must be >= 1; fix JETSPEC_DRAFT_VOCAB")
        return torch.sort(self.ranked_ids_V[:size]).values


def count_tokens(sequences: Iterable[list[int]], vocab_size: int) -> torch.Tensor:
    """How often each id occurs over `sequences`: int64 [V]. Ids outside [0, V) raise (a different tokenizer)."""
    counts_V = torch.zeros(vocab_size, dtype=torch.int64)
    for ids in sequences:
        ids_T = torch.as_tensor(ids, dtype=torch.int64)
        if ids_T.numel() and (int(ids_T.min()) < 0 or int(ids_T.max()) >= vocab_size):
            raise DraftVocabError(f"token id outside [0, {vocab_size}) in the counted data: the data was tokenised "
                                  "for another vocabulary; count the target's own responses")
        counts_V += torch.bincount(ids_T, minlength=vocab_size)
    return counts_V


def rank_tokens(counts_V: torch.Tensor) -> torch.Tensor:
    """Ids by count, descending, ties by ascending id: int64 [V]. Example: counts [5, 0, 7, 5] -> [2, 0, 3, 1]."""
    return torch.sort(-counts_V.to(torch.int64), stable=True).indices


def save_draft_vocab(head_dir: str, vocab: DraftVocab) -> str:
    path = os.path.join(head_dir, FILE)
    with open(path, "w") as f:
        json.dump({"format": FORMAT, "vocab_size": vocab.vocab_size, "default_size": vocab.default_size,
                   "source": vocab.source, "ranked_ids": vocab.ranked_ids_V.tolist()}, f, separators=(",", ":"))
        f.write("\n")
    return path


def load_draft_vocab(head_dir: str) -> DraftVocab | None:
    """The head folder's ranking, or None when it ships none. A present but broken file raises (fix it or delete
    it), so a bad checkpoint fails at start-up."""
    path = os.path.join(str(head_dir), FILE)
    if not os.path.isfile(path):
        return None
    fix = f"rebuild it with `python -m jetspec_sglang.train draft-vocab --head {head_dir}` or delete it"
    try:
        with open(path) as f:
            raw = json.load(f)
        ranked_V = torch.tensor(raw["ranked_ids"], dtype=torch.int64)
        vocab_size, default_size, source = int(raw["vocab_size"]), int(raw["default_size"]), str(raw["source"])
        fmt = raw["format"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DraftVocabError(f"{path}: unreadable draft vocabulary ({type(e).__name__}: {e}); {fix}") from None
    if fmt != FORMAT:
        raise DraftVocabError(f"{path}: format {fmt!r}, expected {FORMAT!r}; {fix}")
    if ranked_V.dim() != 1 or ranked_V.numel() != vocab_size or not torch.equal(
            torch.sort(ranked_V).values, torch.arange(vocab_size)):
        raise DraftVocabError(f"{path}: ranked_ids is not a permutation of range({vocab_size}); {fix}")
    if not 1 <= default_size <= vocab_size:
        raise DraftVocabError(f"{path}: default_size {default_size} is not in [1, {vocab_size}]; {fix}")
    return DraftVocab(ranked_V, default_size, source)


def resolve_draft_vocab(head_dir: str | None, setting: str, vocab_size: int,
                        width: int = 1) -> tuple[torch.Tensor | None, str]:
    """(ids_S int64 ascending, or None for the full vocabulary; a line for the start-up log) for `setting` and the
    target's vocabulary size V. 'auto' uses the head's file at its default size when it ships one. A subset smaller
    than the tree width K (`width`) raises: the per-depth top-K needs K candidates."""
    setting = parse_draft_vocab(setting)
    if setting == FULL:
        return None, "full vocabulary (JETSPEC_DRAFT_VOCAB=full)"
    vocab = load_draft_vocab(head_dir) if head_dir and os.path.isdir(str(head_dir)) else None
    if vocab is None:
        if setting == AUTO:
            return None, f"full vocabulary (the head ships no {FILE})"
        raise DraftVocabError(f"JETSPEC_DRAFT_VOCAB={setting} needs {FILE} in the head folder {head_dir}; build it "
                              f"with `python -m jetspec_sglang.train draft-vocab --head {head_dir}` or set "
                              "JETSPEC_DRAFT_VOCAB=full")
    if vocab.vocab_size != vocab_size:
        raise DraftVocabError(f"{os.path.join(str(head_dir), FILE)} ranks {vocab.vocab_size} tokens, the target's "
                              f"vocabulary has {vocab_size}: it was built for another target; rebuild it or set "
                              "JETSPEC_DRAFT_VOCAB=full")
    size = vocab.default_size if setting == AUTO else int(setting)
    if size >= vocab_size:
        return None, f"full vocabulary ({size} >= {vocab_size} tokens)"
    if size < width:
        raise DraftVocabError(f"JETSPEC_DRAFT_VOCAB={setting}: {size} draft tokens < the tree width "
                              f"JETSPEC_TREE_WIDTH={width}; use a larger size or JETSPEC_DRAFT_VOCAB=full")
    return vocab.subset(size), f"{size} of {vocab_size} tokens ({FILE}: {vocab.source}; JETSPEC_DRAFT_VOCAB={setting})"
