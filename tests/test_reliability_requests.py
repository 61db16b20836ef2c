"""Bad requests and faults against live JETSPEC servers (CPU, fp32, 127.0.0.1).

Every bad request is either served correctly or refused with HTTP 400 and a message naming the problem, and the
server keeps serving (a follow-up request succeeds); a dropped, aborted or timed-out request gives its KV back
(/v1/loads: no tokens in use, nothing running, within a bounded time). Where a feature is served, its greedy
output equals plain decoding's token for token: SmolLM2 + the head against a plain server (session fixtures
`jetspec_server` / `plain_server`). Checks where only survival matters use a tiny Qwen3 JETSPEC server (module
fixture `tiny`). Marked `server` (.ci/run runs them).
"""
import json
import re
import time

import pytest

from reliability import load_soak, save_head

pytestmark = pytest.mark.server
soak = load_soak()  # the HTTP probes shared with bench/soak.py

TINY_VOCAB, TINY_CONTEXT = 2048, 4096
CHAT = "<|im_start|>user\nWrite a short story about a cat.<|im_end|>\n<|im_start|>assistant\n"
GREEDY = {"max_new_tokens": 8, "temperature": 0}
KV_TIMEOUT = 60


@pytest.fixture(scope="class")
def tiny(tmp_path_factory, server_logs):
    from jetspec_sglang.models import prepare_model
    from jetspec_sglang.serving import Server, ServerSpec

    head = save_head(tmp_path_factory.mktemp("tiny-head") / "head")  # random head, block 8
    spec = ServerSpec(model=str(prepare_model("tiny-qwen3")), head=str(head), budget=16, depth=7)
    with Server(spec, server_logs / "tiny-jetspec.log") as server:
        yield server


def assert_serving(server) -> None:
    out = server.generate(text="Hello there", max_new_tokens=4, temperature=0)
    assert len(out["output_ids"]) == 4, out


def assert_kv_freed(server, timeout: float = KV_TIMEOUT) -> float:
    idle, waited, state = soak.wait_idle(server.url, timeout)
    assert idle, f"KV or requests still held {timeout} s later: {state}"
    return waited


def error_text(body) -> str:
    return json.dumps(body)


# --- bad requests on the tiny server: (path, payload, expected) with expected = a check or (400, message regex)

def _ids(n: int, first: int = 5) -> list[int]:
    return [first + i % 1500 for i in range(n)]


def _greedy(**sp):
    return dict(GREEDY, **sp)


def _one_output(n):
    def check(body):
        assert len(body["output_ids"]) == n and body["meta_info"]["finish_reason"]["type"] == "length", body
    return check


def _n_outputs(n, field="output_ids"):
    def check(body):
        items = body if isinstance(body, list) else body["choices"]
        assert len(items) == n and all((item.get(field) if field in item else item.get("text")) for item in items)
        if field == "output_ids":  # greedy: every copy is the same sequence
            assert all(item["output_ids"] == items[0]["output_ids"] for item in items)
    return check


def _input_logprobs(body):
    meta = body["meta_info"]
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]
    assert all(v is None or v <= 0 for v, _, _ in meta["input_token_logprobs"])
    assert len(meta["output_token_logprobs"]) == len(body["output_ids"])


VOCAB_MSG = r"JETSPEC: input_ids contains token id .* outside the vocabulary \[0, 2048\)"
BAD_REQUESTS = {
    "empty_text": ("/generate", {"text": "", "sampling_params": GREEDY}, (400, r"JETSPEC: the prompt is empty")),
    "empty_input_ids": ("/generate", {"input_ids": [], "sampling_params": GREEDY}, (400, r"input_ids cannot be empty")),
    "openai_empty_prompt": ("/v1/completions", {"model": "m", "prompt": "", "max_tokens": 4},
                            (400, r"Prompt cannot be empty")),
    "no_prompt": ("/generate", {"sampling_params": GREEDY}, (400, r"Either text, input_ids or input_embeds")),
    "max_new_tokens_0": ("/generate", {"text": CHAT, "sampling_params": _greedy(max_new_tokens=0)}, _one_output(0)),
    "max_new_tokens_1": ("/generate", {"text": CHAT, "sampling_params": _greedy(max_new_tokens=1)}, _one_output(1)),
    "openai_max_tokens_0": ("/v1/completions", {"model": "m", "prompt": CHAT, "max_tokens": 0},
                            (400, r"max_tokens must be positive")),
    "max_new_tokens_beyond_context": ("/generate", {"text": CHAT, "sampling_params": _greedy(max_new_tokens=10**5)},
                                      (400, r"exceeds the model's maximum context length of 4096")),
    "prompt_beyond_context": ("/generate", {"input_ids": _ids(5000), "sampling_params": GREEDY},
                              (400, r"longer than the model's context length")),
    "negative_token_id": ("/generate", {"input_ids": [5, -1, 7], "sampling_params": GREEDY}, (400, VOCAB_MSG)),
    "token_id_equal_to_vocab": ("/generate", {"input_ids": [5, TINY_VOCAB, 7], "sampling_params": GREEDY},
                                (400, VOCAB_MSG)),
    "huge_token_id": ("/generate", {"input_ids": [5, 10**9], "sampling_params": GREEDY}, (400, VOCAB_MSG)),
    "batch_with_one_bad_prompt": ("/generate", {"input_ids": [[5, 6, 7], [5, -3]], "sampling_params": GREEDY},
                                  (400, VOCAB_MSG)),
    "openai_bad_token_id": ("/v1/completions", {"model": "m", "prompt": [5, 99999], "max_tokens": 4},
                            (400, VOCAB_MSG)),
    "n2_generate": ("/generate", {"text": CHAT, "sampling_params": _greedy(n=2)}, _n_outputs(2)),
    "n2_generate_stream": ("/generate", {"text": CHAT, "stream": True, "sampling_params": _greedy(n=2)}, "stream"),
    "n2_openai": ("/v1/completions", {"model": "m", "prompt": CHAT, "max_tokens": 6, "temperature": 0, "n": 2},
                  _n_outputs(2, "text")),
    "n3_chat_sampled": ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                                                 "max_tokens": 6, "temperature": 0.8, "n": 3},
                        _n_outputs(3, "message")),
    "frequency_penalty": ("/generate", {"text": CHAT, "sampling_params": _greedy(frequency_penalty=0.5)},
                          (400, r"JETSPEC: frequency_penalty=0.5 is not supported.*without frequency_penalty")),
    "presence_penalty": ("/v1/completions", {"model": "m", "prompt": CHAT, "max_tokens": 4, "presence_penalty": 0.5},
                         (400, r"JETSPEC: presence_penalty=0.5 is not supported")),
    "repetition_penalty": ("/generate", {"text": CHAT, "sampling_params": _greedy(repetition_penalty=1.3)},
                           (400, r"JETSPEC: repetition_penalty=1.3 is not supported")),
    "min_p": ("/generate", {"text": CHAT, "sampling_params": _greedy(temperature=0.7, min_p=0.1)},
              (400, r"JETSPEC: min_p is not applied")),
    "min_new_tokens": ("/generate", {"text": CHAT, "sampling_params": _greedy(min_new_tokens=4)},
                       (400, r"JETSPEC: min_new_tokens=4 is not supported.*without min_new_tokens")),
    "openai_min_tokens": ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                                                   "max_tokens": 8, "min_tokens": 4},
                          (400, r"JETSPEC: min_new_tokens=4 is not supported")),
    "return_sampling_mask": ("/generate", {"text": CHAT, "return_sampling_mask": True,
                                           "sampling_params": _greedy(top_k=1)},
                             (400, r"JETSPEC: return_sampling_mask is not supported.*without return_sampling_mask")),
    "custom_logit_processor": ("/generate", {"text": CHAT, "custom_logit_processor": "{}", "sampling_params": GREEDY},
                               (400, r"custom logit processor")),
    "top_logprobs_over_vocab": ("/generate", {"text": CHAT, "return_logprob": True, "top_logprobs_num": 5000,
                                              "sampling_params": GREEDY},
                                (400, r"JETSPEC: top_logprobs_num=5000 exceeds the vocabulary size 2048")),
    "input_logprobs": ("/generate", {"text": CHAT, "return_logprob": True, "logprob_start_len": 0,
                                     "top_logprobs_num": 2, "sampling_params": GREEDY}, _input_logprobs),
    "return_hidden_states": ("/generate", {"text": CHAT, "return_hidden_states": True, "sampling_params": GREEDY},
                             (400, r"not configured to return hidden states")),
    "invalid_regex": ("/generate", {"text": CHAT, "sampling_params": _greedy(regex="([")},
                      (400, r"Failed to compile regex")),
    "invalid_json_schema": ("/generate", {"text": CHAT, "sampling_params": _greedy(json_schema="{not json")},
                            (400, r"Failed to compile json")),
    "malformed_json_body": ("/generate", b'{"input_ids": [5, 6], "sampling_params": {"max_new_tokens": ',
                            (400, r"JSON decode error")),
    "wrong_type": ("/generate", {"text": CHAT, "sampling_params": {"max_new_tokens": "ten"}}, (400, r"invalid type")),
    "negative_temperature": ("/generate", {"text": CHAT, "sampling_params": _greedy(temperature=-1)},
                             (400, r"temperature must be a non-negative")),
    "top_p_zero": ("/generate", {"text": CHAT, "sampling_params": _greedy(top_p=0)}, (400, r"top_p must be in")),
    "lora_without_lora": ("/generate", {"text": CHAT, "lora_path": "x", "sampling_params": GREEDY},
                          (400, r"LoRA is not enabled")),
}


LONG = dict(max_new_tokens=3500, temperature=0, ignore_eos=True)  # minutes of decoding unless cancelled


class TestTinyServer:
    """One tiny-Qwen3 JETSPEC server (random head) for the whole class, stopped before the SmolLM2 tests."""

    @pytest.mark.parametrize("name", list(BAD_REQUESTS))
    def test_bad_request_is_served_or_refused_and_the_server_keeps_serving(self, tiny, name):
        path, payload, expected = BAD_REQUESTS[name]
        if expected == "stream":
            status, chunks = soak.stream(tiny.url, payload, timeout=120)
            assert status == 200 and chunks and all(c["meta_info"]["finish_reason"] for c in chunks[-2:])
        else:
            status, body = soak.post(tiny.url, path, payload, timeout=120)
            if isinstance(expected, tuple):
                code, message = expected
                assert status == code, f"{name}: HTTP {status} {error_text(body)[:500]}"
                assert re.search(message, error_text(body)), f"{name}: message {error_text(body)[:500]}"
            else:
                assert status == 200, f"{name}: HTTP {status} {error_text(body)[:500]}"
                expected(body)
        assert_serving(tiny)

    # --- faults: the request's KV comes back, the server continues

    def test_client_disconnect_mid_stream_frees_kv(self, tiny):
        times = []
        status, chunks = soak.stream(tiny.url, {"text": CHAT, "sampling_params": LONG}, stop_after=6,
                                     on_chunk=lambda i, c: times.append(time.time()), timeout=120)
        assert status == 200 and len(chunks) == 6
        tokens = len(chunks[-1]["output_ids"]) - len(chunks[0]["output_ids"])
        rate = tokens / max(times[-1] - times[0], 1e-3)  # tokens/s while it ran
        waited = assert_kv_freed(tiny)
        remaining = (LONG["max_new_tokens"] - len(chunks[-1]["output_ids"])) / rate
        assert waited < remaining / 2, f"freed after {waited:.1f} s: it ran to its end (~{remaining:.0f} s)"
        assert_serving(tiny)

    def test_abort_request_api_frees_kv(self, tiny):
        rid = "reliability-abort"
        aborted = []

        def abort_after_three(i, chunk):
            if i == 2:
                aborted.append(soak.post(tiny.url, "/abort_request", {"rid": rid}, 30)[0])

        status, chunks = soak.stream(tiny.url, {"text": CHAT, "rid": rid, "sampling_params": LONG},
                                     on_chunk=abort_after_three, timeout=120)
        assert status == 200 and aborted == [200]
        assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "abort", chunks[-1]["meta_info"]
        assert len(chunks[-1]["output_ids"]) < LONG["max_new_tokens"]
        assert_kv_freed(tiny)
        assert_serving(tiny)

    def test_client_timeout_frees_kv(self, tiny):
        rid = "reliability-timeout"
        with pytest.raises(TimeoutError):
            soak.post(tiny.url, "/generate", {"text": CHAT, "rid": rid, "sampling_params": LONG}, timeout=3)
        assert_kv_freed(tiny)
        log = tiny.log_path.read_text(errors="replace")
        assert f"Abort request obj.rid='{rid}'" in log, "the server did not cancel the timed-out request"
        assert_serving(tiny)

    # --- requests that run to the end of the context window (last: they ended the server before the fix)

    def test_requests_that_reach_the_context_limit(self, tiny):
        """A prompt at the input limit (context - 7 tokens here) and generations that end at the context length.

        SGLang clamps max_new_tokens to context - 2 - prompt; the KV reserved for the tree beyond the request's
        length must come back (a leak ends the server: the scheduler's idle check raises)."""
        for prompt_len, max_new in ((TINY_CONTEXT - 7, 1), (TINY_CONTEXT - 100, 100), (TINY_CONTEXT - 7, 6)):
            try:
                out = tiny.generate(input_ids=_ids(prompt_len), max_new_tokens=max_new, temperature=0,
                                    ignore_eos=True)
                assert len(out["output_ids"]) == min(max_new, TINY_CONTEXT - 2 - prompt_len), out["meta_info"]
                assert_kv_freed(tiny)
                assert_serving(tiny)
            except (OSError, RuntimeError) as e:
                pytest.fail(f"prompt {prompt_len} + max_new_tokens {max_new}: {type(e).__name__}: {e}\n"
                            f"server log:\n{tiny.log_tail(25)}")


# --- SmolLM2: served features equal plain decoding (greedy, fp32)

@pytest.fixture(scope="module")
def smol(smollm2_dir):
    from transformers import AutoTokenizer

    from jetspec_sglang.data import encode_chat, load_prompts

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    records = load_prompts("gsm8k", "eval")[:3] + load_prompts("humaneval", "eval")[:2]
    return tok, encode_chat(tok, records), encode_chat


def both(plain_server, jetspec_server, path: str, payload: dict) -> tuple[dict, dict]:
    """The same request on both servers (JETSPEC first); both must answer 200."""
    out = []
    for server in (jetspec_server, plain_server):
        status, body = soak.post(server.url, path, payload, timeout=600)
        assert status == 200, f"{server.url}{path}: HTTP {status} {error_text(body)[:500]}"
        out.append(body)
    return out[0], out[1]


# Log-probabilities of the same fp32 model through two attention paths (tree verify vs plain decode, 30 layers):
# measured differences ~6e-6; the float32 row of conftest's table is for one kernel against its reference.
LOGPROB_TOL = dict(rtol=0.0, atol=1e-4)


def test_logprobs_equal_plain(plain_server, jetspec_server, smol):
    _, prompts, _ = smol
    import torch

    spec, plain = both(plain_server, jetspec_server, "/generate", {
        "input_ids": prompts[0], "return_logprob": True, "top_logprobs_num": 3,
        "sampling_params": {"max_new_tokens": 16, "temperature": 0}})
    assert spec["output_ids"] == plain["output_ids"]
    values = {}
    for name, out in (("spec", spec), ("plain", plain)):
        meta = out["meta_info"]
        chosen, tops = meta["output_token_logprobs"], meta["output_top_logprobs"]
        assert [t for _, t, _ in chosen] == out["output_ids"]
        assert len(tops) == len(chosen) and all(len(top) == 3 for top in tops)
        for (value, token, _), top in zip(chosen, tops):
            assert value <= 0 and value == value  # a log-probability, not NaN
            assert [v for v, _, _ in top] == sorted((v for v, _, _ in top), reverse=True)
            assert top[0][1] == token  # greedy: the emitted token is the most likely one
        values[name] = torch.tensor([v for v, _, _ in chosen] + [v for top in tops for v, _, _ in top])
    torch.testing.assert_close(values["spec"], values["plain"], **LOGPROB_TOL)

    spec, plain = both(plain_server, jetspec_server, "/v1/completions", {
        "model": "m", "prompt": prompts[1], "max_tokens": 12, "temperature": 0, "logprobs": 2})
    s, p = spec["choices"][0], plain["choices"][0]
    assert s["text"] == p["text"] and "".join(s["logprobs"]["tokens"]) == s["text"]
    torch.testing.assert_close(torch.tensor(s["logprobs"]["token_logprobs"]),
                               torch.tensor(p["logprobs"]["token_logprobs"]), **LOGPROB_TOL)


def test_n_greater_than_one_equals_plain(plain_server, jetspec_server, smol):
    _, prompts, _ = smol
    single = plain_server.generate(input_ids=prompts[2], max_new_tokens=12, temperature=0)
    spec, plain = both(plain_server, jetspec_server, "/generate", {
        "input_ids": prompts[2], "sampling_params": {"max_new_tokens": 12, "temperature": 0, "n": 2}})
    assert [o["output_ids"] for o in spec] == [o["output_ids"] for o in plain] == [single["output_ids"]] * 2
    spec, plain = both(plain_server, jetspec_server, "/v1/completions", {
        "model": "m", "prompt": prompts[2], "max_tokens": 12, "temperature": 0, "n": 2})
    assert [c["text"] for c in spec["choices"]] == [c["text"] for c in plain["choices"]] == [single["text"]] * 2


def test_constrained_decoding_equals_plain(plain_server, jetspec_server, smol):
    tok, prompts, encode_chat = smol
    regex = r"The answer is [0-9]{1,6}\."
    spec, plain = both(plain_server, jetspec_server, "/generate", {
        "input_ids": prompts[0], "sampling_params": {"max_new_tokens": 24, "temperature": 0, "regex": regex}})
    assert re.fullmatch(regex, spec["text"]), spec["text"]
    assert spec["output_ids"] == plain["output_ids"]
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    prompt = encode_chat(tok, ["Describe a person as JSON with a name and an age."])[0]
    spec, plain = both(plain_server, jetspec_server, "/generate", {
        "input_ids": prompt, "sampling_params": {"max_new_tokens": 48, "temperature": 0,
                                                 "json_schema": json.dumps(schema)}})
    value = json.loads(spec["text"])
    assert set(value) == {"name", "age"} and isinstance(value["age"], int) and len(value["name"]) <= 12
    assert spec["output_ids"] == plain["output_ids"]


def commits(server, prompt: list[int], max_new: int) -> tuple[list[list[int]], str, list[int]]:
    """Stream a greedy request: the token blocks committed per decode step (one SSE chunk each), the full text and
    the text offset at which each block starts."""
    status, chunks = soak.stream(server.url, {"input_ids": prompt,
                                              "sampling_params": {"max_new_tokens": max_new, "temperature": 0}})
    assert status == 200 and chunks
    blocks, starts, seen, text_seen = [], [], 0, 0
    for chunk in chunks:
        ids = chunk["output_ids"]
        blocks.append(ids[seen:])
        starts.append(text_seen)
        seen, text_seen = len(ids), len(chunk["text"])
    return blocks, chunks[-1]["text"], starts


MAX_NEW = 48


@pytest.fixture(scope="module")
def accepted_blocks(jetspec_server, plain_server, smol):
    """Per prompt: JETSPEC's streamed commits (checked equal to plain greedy) and the plain output."""
    _, prompts, _ = smol
    out = []
    for prompt in prompts:
        blocks, text, starts = commits(jetspec_server, prompt, MAX_NEW)
        plain = plain_server.generate(input_ids=prompt, max_new_tokens=MAX_NEW, temperature=0)
        assert [t for b in blocks for t in b] == plain["output_ids"] and text == plain["text"]
        out.append((prompt, blocks, text, starts, plain))
    multi = sum(len(b) > 1 for _, blocks, *_ in out for b in blocks[1:])
    assert multi > 0, "no decode step committed more than one token: acceptance 1 (is the head trained?)"
    return out


def test_stop_string_inside_an_accepted_block_equals_plain(plain_server, jetspec_server, accepted_blocks):
    checked = 0
    for prompt, blocks, text, starts, _ in accepted_blocks:
        stop = None
        for block, start, end in zip(blocks[1:], starts[1:], starts[2:] + [len(text)]):
            # A stop string strictly inside a multi-token commit: the tokens after it are committed in the same
            # step and must not be emitted.
            if len(block) < 3 or end - start < 4:
                continue
            for size in (3, 2):
                for at in range(start + 1, end - size):
                    candidate = text[at: at + size]
                    if candidate.strip() and text.find(candidate) == at:
                        stop = candidate
                        break
                if stop:
                    break
            if stop:
                break
        if stop is None:
            continue
        spec, plain = both(plain_server, jetspec_server, "/generate", {
            "input_ids": prompt, "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "stop": [stop]}})
        assert spec["text"] == plain["text"] == text[: text.find(stop)], (stop, spec["text"])
        assert spec["output_ids"] == plain["output_ids"]
        assert spec["meta_info"]["finish_reason"] == plain["meta_info"]["finish_reason"]
        assert spec["meta_info"]["finish_reason"]["type"] == "stop"
        checked += 1
    assert checked >= 1, "no stop string could be placed inside a multi-token commit"


def test_stop_token_inside_an_accepted_block_equals_plain(plain_server, jetspec_server, accepted_blocks):
    checked = 0
    for prompt, blocks, _, _, plain_full in accepted_blocks:
        full = plain_full["output_ids"]
        pick = None
        for i, block in enumerate(blocks[1:], start=1):
            offset = sum(len(b) for b in blocks[:i])
            for j, token in enumerate(block[:-1]):  # not the last token of its commit
                if full.index(token) == offset + j:  # its first occurrence
                    pick = (token, offset + j)
                    break
            if pick:
                break
        if pick is None:
            continue
        token, position = pick
        spec, plain = both(plain_server, jetspec_server, "/generate", {
            "input_ids": prompt, "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0,
                                                     "stop_token_ids": [token]}})
        assert plain["output_ids"] == full[: position + 1]  # plain stops right at it
        assert spec["output_ids"] == plain["output_ids"] and spec["text"] == plain["text"]
        assert spec["meta_info"]["finish_reason"] == plain["meta_info"]["finish_reason"] == \
            {"type": "stop", "matched": token}
        checked += 1
    assert checked >= 1, "no stop token could be placed inside a multi-token commit"
