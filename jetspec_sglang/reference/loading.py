"""Load what the reference engine runs: the HF target + tokenizer (a folder, or a `models.prepare_model` name),
the draft head attached to the target (a folder, or the head shipped under jetspec_sglang/heads/), and the prompt
token ids (chat template by default when the tokenizer has one). No sglang import.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from jetspec_sglang.draft_head import DraftHead, load_draft_head
from jetspec_sglang.models import MODEL_DIRNAMES, prepare_model

HEADS_DIR = Path(__file__).resolve().parent.parent / "heads"  # shipped heads: heads/<target folder name>/


def resolve_target(target: str) -> Path:
    """A model folder, or one of the prepared names (smollm2, tiny-qwen3, tiny-llama) built offline on demand."""
    if target in MODEL_DIRNAMES:
        return prepare_model(target)
    path = Path(target).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"--target {target!r} is neither a model folder with config.json nor one of "
                                f"{sorted(MODEL_DIRNAMES)}; prepare one with `python -m jetspec_sglang.models "
                                f"prepare NAME`")
    return path


def shipped_head_dir(target: str) -> Path | None:
    """jetspec_sglang/heads/<folder name>/ for a target name or folder, if a head (config.json) is shipped there.

    "smollm2" -> heads/smollm2-135m-instruct; "/x/smollm2-135m-instruct" -> the same folder.
    """
    name = MODEL_DIRNAMES.get(target) or Path(target).expanduser().resolve().name
    folder = HEADS_DIR / name
    return folder if (folder / "config.json").is_file() else None


def load_target(path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str = "cpu",
                attn_implementation: str = "sdpa"):
    """(model in eval mode, tokenizer) from an HF folder; attention sdpa or eager (tree masks need one of them)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn_implementation)
    return model.to(device).eval(), tokenizer


def load_head_for(target, path: str | os.PathLike, dtype: torch.dtype | None = None) -> DraftHead:
    """Load a head folder, check it fits `target`, and attach the target's embedding and lm_head."""
    weight = target.get_input_embeddings().weight
    head = load_draft_head(path, target_config=target.config, dtype=dtype or weight.dtype, device=weight.device)
    head.attach_target(target.get_input_embeddings(), target.get_output_embeddings())
    return head


def encode_prompt(tokenizer, text: str, chat: bool | None = None) -> list[int]:
    """Token ids of `text`; chat None = apply the chat template when the tokenizer has one (instruct targets)."""
    use_chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
    if use_chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--chat was asked for but the target's tokenizer has no chat_template; use --no-chat")
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False)
        return tokenizer(text, add_special_tokens=False).input_ids  # the template wrote the special tokens
    return tokenizer(text).input_ids
