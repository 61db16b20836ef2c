"""The head runs in the target's dtype (glue/args.resolve_dtype): for every target config dtype, head config dtype
and --dtype (auto, float32, float16, bfloat16) the JETSPEC server arguments make SGLang's own ModelConfig give the
target and the draft the same dtype. Real SGLang ServerArgs and ModelConfig, configs on disk; nothing mocked.
(The live server started without --dtype is tests/test_server_dtype.py; JetSpecDraftModel's cast of the target
hidden states is tests/test_glue_draft_model.py.)
"""
import importlib.util
import itertools
import json
import shutil

import pytest

if importlib.util.find_spec("sglang") is None:
    pytest.skip("sglang is not installed (run scripts/setup.sh)", allow_module_level=True)

import sglang_fixtures as fx  # noqa: E402

fx.import_interpreted()  # keep SGLang's Triton kernels interpretable for the other test files of this run

import torch  # noqa: E402
from jetspec_sglang.models import prepare_model  # noqa: E402
from sglang.srt.arg_groups.overrides import record_foreign_defaults, resolution_result  # noqa: E402
from sglang.srt.configs.model_config import ModelConfig  # noqa: E402
from sglang.srt.runtime_context import get_context  # noqa: E402
from sglang.srt.server_args import ServerArgs  # noqa: E402

pytestmark = [pytest.mark.sglang, pytest.mark.usefixtures("no_jetspec_env")]

STORED = ("float32", "float16", "bfloat16")
FLAGS = ("auto", "float32", "float16", "bfloat16")
TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{("target"|"head", stored dtype): folder} - the tiny Qwen3 target and a tiny head, config dtype rewritten."""
    root = tmp_path_factory.mktemp("dtypes")
    head = fx.make_head(root / "head", block_size=4)
    out = {}
    for kind, src in (("target", prepare_model("tiny-qwen3")), ("head", head)):
        for stored in STORED:
            dst = root / f"{kind}-{stored}"
            shutil.copytree(src, dst)
            raw = json.loads((dst / "config.json").read_text())
            raw.pop("torch_dtype", None)
            raw["dtype"] = stored
            (dst / "config.json").write_text(json.dumps(raw))
            out[kind, stored] = str(dst)
    return out


def resolved_dtype(algo, target, head, flag) -> str:
    args = ServerArgs(model_path=target, speculative_draft_model_path=head, device="cpu", dtype=flag)
    record_foreign_defaults(args, "test.validate", algo.validate_server_args)
    record_foreign_defaults(args, "test.handle", algo.handle_server_args)
    return resolution_result(args, "dtype")


@pytest.mark.parametrize("target_stored,head_stored", list(itertools.product(STORED, STORED)))
def test_target_and_head_get_one_dtype(algo, folders, target_stored, head_stored):
    target, head = folders["target", target_stored], folders["head", head_stored]
    for flag in FLAGS:
        dtype = resolved_dtype(algo, target, head, flag)
        with get_context().override_server_args(device="cpu", speculative_algorithm="JETSPEC"):
            target_dtype = ModelConfig(target, dtype=dtype).dtype
            head_dtype = ModelConfig(head, dtype=dtype, is_draft_model=True, speculative_algorithm="DFLASH").dtype
            stock_head_dtype = ModelConfig(head, dtype=flag, is_draft_model=True,
                                           speculative_algorithm="DFLASH").dtype
        assert head_dtype == target_dtype, (target_stored, head_stored, flag, dtype)
        # The target's dtype is what SGLang gives it for the user's flag: JETSPEC changes only the head's.
        assert target_dtype == ModelConfig(target, dtype=flag).dtype
        if flag != "auto":
            assert dtype == flag and stock_head_dtype == TORCH[flag]


def test_auto_with_an_fp32_target_and_a_bf16_head_is_the_reported_crash(algo, folders):
    """Without the resolution SGLang gives this pair float16 and bfloat16 (the scheduler died on the first
    request); JETSPEC declares float16 for both."""
    target, head = folders["target", "float32"], folders["head", "bfloat16"]
    with get_context().override_server_args(device="cpu"):
        assert ModelConfig(target, dtype="auto").dtype == torch.float16
        assert ModelConfig(head, dtype="auto", is_draft_model=True, speculative_algorithm="DFLASH").dtype == \
            torch.bfloat16
    assert resolved_dtype(algo, target, head, "auto") == "float16"
