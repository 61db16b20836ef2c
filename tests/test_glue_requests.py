"""Per-request refusals (glue/requests.py, ledger H4) on real SGLang requests: `Req` objects carrying
`SamplingParams` normalised and verified as the tokenizer manager does. min_p, each penalty and a custom logit
processor are refused with a message naming the field; plain sampling is served. The AROUND hook on
validate_dflash_request keeps SGLang's own refusals and applies these only when the running algorithm is JETSPEC.
"""
import functools
import importlib.util
from array import array

import pytest

if importlib.util.find_spec("sglang") is None:
    pytest.skip("sglang is not installed (run scripts/setup.sh)", allow_module_level=True)

import sglang_fixtures as fx  # noqa: E402

fx.import_interpreted()  # keep SGLang's Triton kernels interpretable for the other test files of this run

from jetspec_sglang.glue.hooks import validate_request  # noqa: E402
from jetspec_sglang.glue.requests import unsupported_reason  # noqa: E402
from sglang.srt.managers.schedule_batch import Req  # noqa: E402
from sglang.srt.runtime_context import get_context  # noqa: E402
from sglang.srt.sampling.custom_logit_processor import DisallowedTokensLogitsProcessor  # noqa: E402
from sglang.srt.sampling.sampling_params import SamplingParams  # noqa: E402
from sglang.srt.speculative.dflash_utils import validate_dflash_request  # noqa: E402

pytestmark = pytest.mark.sglang
VOCAB = 2048


@functools.cache
def tokenizer():
    from transformers import AutoTokenizer

    from jetspec_sglang.models import prepare_model

    return AutoTokenizer.from_pretrained(prepare_model("tiny-qwen3"))


def make_req(custom_logit_processor=None, return_hidden_states=False, **params) -> Req:
    sampling_params = SamplingParams(**params)
    sampling_params.normalize(tokenizer())  # stop strings are tokenised here
    sampling_params.verify(VOCAB)
    return Req("rid", "", array("q", [1, 2, 3]), sampling_params, custom_logit_processor=custom_logit_processor,
               return_hidden_states=return_hidden_states)


@pytest.mark.parametrize("params", [
    {},
    dict(temperature=0.0),
    dict(temperature=0.7, top_p=0.9, top_k=20),
    dict(temperature=1.3, top_k=1, max_new_tokens=16, stop=["\n\n", "###"], stop_token_ids=[7]),
    dict(temperature=0.5, min_p=0.0, frequency_penalty=0.0, presence_penalty=0.0, repetition_penalty=1.0),
    dict(temperature=0.8, min_p=None, repetition_penalty=None),  # None = the default after normalisation
    dict(sampling_seed=42, ignore_eos=True, n=1),
])
def test_plain_sampling_is_served(params):
    assert unsupported_reason(make_req(**params)) is None


@pytest.mark.parametrize("field,value", [
    ("min_p", 0.05),
    ("frequency_penalty", 0.5),
    ("frequency_penalty", -0.5),
    ("presence_penalty", 0.3),
    ("repetition_penalty", 1.2),
    ("repetition_penalty", 0.9),
])
def test_unsupported_fields_are_refused_by_name(field, value):
    message = unsupported_reason(make_req(temperature=0.7, **{field: value}))
    assert message is not None and message.startswith("JETSPEC: ")
    assert field in message
    assert f"without {field}" in message  # the fix


def test_return_sampling_mask_is_refused():
    """SGLang fills the sampling mask in plain decoding's sampler; the JETSPEC decode step never does, so the
    request is refused instead of answered without the mask it asked for."""
    req = make_req(temperature=0.7, top_k=20)
    assert unsupported_reason(req) is None
    req.return_sampling_mask = True  # as scheduler.py builds Req(return_sampling_mask=recv_req...)
    message = unsupported_reason(req)
    assert message is not None and "return_sampling_mask is not supported" in message
    assert "without return_sampling_mask" in message


def test_custom_logit_processor_is_refused():
    processor = DisallowedTokensLogitsProcessor.to_str()
    req = make_req(custom_logit_processor=processor, custom_params={"token_ids": [5]})
    message = unsupported_reason(req)
    assert message is not None and "custom_logit_processor" in message


def test_the_hook_keeps_sglang_refusals_and_applies_ours_only_under_jetspec():
    from jetspec_sglang.glue import register

    register()  # JETSPEC must be a known algorithm name for the published config
    overlap_hidden = make_req(return_hidden_states=True)
    with get_context().override_server_args(speculative_algorithm="JETSPEC"):
        # SGLang's own message wins (it runs first), then ours, then plain requests pass.
        assert "return_hidden_states" in validate_request(validate_dflash_request, overlap_hidden, True)
        assert "min_p" in validate_request(validate_dflash_request, make_req(min_p=0.2), False)
        assert validate_request(validate_dflash_request, make_req(temperature=0.6), True) is None
    with get_context().override_server_args(speculative_algorithm="DFLASH"):
        assert validate_request(validate_dflash_request, make_req(min_p=0.2), False) is None
