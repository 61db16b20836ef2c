"""Real SGLang servers on 127.0.0.1 (CPU, fp32): JETSPEC with the shipped SmolLM2-135M head against plain decoding.

Marked `server` (skipped by the fast suite; .ci/run runs them). Greedy outputs must be identical token for token.
"""
import concurrent.futures as cf
import json
import threading
import time
import urllib.request

import pytest

pytestmark = pytest.mark.server

MAX_NEW = 48


@pytest.fixture(scope="module")
def prompts(smollm2_dir):
    from transformers import AutoTokenizer

    from jetspec_sglang.data import encode_chat, load_prompts

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    records = load_prompts("gsm8k", "eval")[:8] + load_prompts("humaneval", "eval")[:6] + \
        load_prompts("mtbench", "eval")[:6]
    return encode_chat(tok, records)


def _run(server, prompts, concurrency, **sampling):
    sampling = dict(dict(max_new_tokens=MAX_NEW, temperature=0), **sampling)
    with cf.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda ids: server.generate(input_ids=ids, **sampling), prompts))


@pytest.fixture(scope="module")
def plain_outputs(plain_server, prompts):
    return _run(plain_server, prompts, 4)


@pytest.mark.parametrize("concurrency", [1, 8])
def test_greedy_identical_to_plain(jetspec_server, plain_outputs, prompts, concurrency):
    outs = _run(jetspec_server, prompts, concurrency)
    for i, (spec, plain) in enumerate(zip(outs, plain_outputs)):
        assert spec["output_ids"] == plain["output_ids"], f"prompt {i} differs at concurrency {concurrency}"
        assert spec["meta_info"]["spec_verify_ct"] >= 1


def test_trained_head_accepts(jetspec_server, prompts):
    outs = _run(jetspec_server, prompts[:10], 2)
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    rounds = sum(o["meta_info"]["spec_verify_ct"] for o in outs)
    accept = tokens / rounds
    reported = [o["meta_info"]["spec_accept_length"] for o in outs]
    assert accept > 1.5, f"mean accept length {accept:.2f} (per request {reported})"


def test_radix_cache_hit_same_output(jetspec_server, prompts):
    first = jetspec_server.generate(input_ids=prompts[0], max_new_tokens=16, temperature=0)
    again = jetspec_server.generate(input_ids=prompts[0], max_new_tokens=16, temperature=0)
    assert again["meta_info"]["cached_tokens"] > 0
    assert again["output_ids"] == first["output_ids"]


def test_max_tokens_eos_and_stop(jetspec_server, plain_server, prompts):
    for n in (1, 2, 5, 17):
        out = jetspec_server.generate(input_ids=prompts[1], max_new_tokens=n, temperature=0)
        assert len(out["output_ids"]) == n and out["meta_info"]["finish_reason"]["type"] == "length"
    # EOS: a long budget ends at <|im_end|> exactly as plain decoding does, nothing after it.
    spec = jetspec_server.generate(input_ids=prompts[2], max_new_tokens=400, temperature=0)
    plain = plain_server.generate(input_ids=prompts[2], max_new_tokens=400, temperature=0)
    assert spec["output_ids"] == plain["output_ids"]
    assert spec["meta_info"]["finish_reason"] == plain["meta_info"]["finish_reason"]
    # Stop string taken from the middle of the plain output: the text ends right before it.
    text = plain_server.generate(input_ids=prompts[3], max_new_tokens=48, temperature=0)["text"]
    stop = text[len(text) // 2: len(text) // 2 + 4]
    if stop.strip():
        out = jetspec_server.generate(input_ids=prompts[3], max_new_tokens=48, temperature=0, stop=[stop])
        ref = plain_server.generate(input_ids=prompts[3], max_new_tokens=48, temperature=0, stop=[stop])
        assert out["text"] == ref["text"] and stop not in out["text"]
        assert out["meta_info"]["finish_reason"]["type"] == "stop"


def _used_tokens(server) -> int:
    status, body = server.get("/v1/loads")
    assert status == 200
    return sum(load["num_used_tokens"] for load in body["loads"])


def test_abort_frees_kv(jetspec_server, prompts):
    payload = json.dumps({"input_ids": prompts[4], "sampling_params": {"max_new_tokens": 2000, "temperature": 0,
                          "ignore_eos": True}, "stream": True, "rid": "abort-me"}).encode()
    request = urllib.request.Request(jetspec_server.url + "/generate", data=payload,
                                     headers={"Content-Type": "application/json"})
    chunks = []

    def stream():
        with urllib.request.urlopen(request, timeout=600) as r:
            for line in r:
                chunks.append(line)

    reader = threading.Thread(target=stream)
    reader.start()
    deadline = time.time() + 120
    while len(chunks) < 4 and time.time() < deadline:
        time.sleep(0.2)
    assert _used_tokens(jetspec_server) > 0
    status, _ = jetspec_server.post("/abort_request", {"rid": "abort-me"})
    assert status == 200
    reader.join(timeout=120)
    deadline = time.time() + 60
    while _used_tokens(jetspec_server) != 0 and time.time() < deadline:
        time.sleep(0.5)
    assert _used_tokens(jetspec_server) == 0
    assert jetspec_server.generate(text="Hello", max_new_tokens=4, temperature=0)["output_ids"]


def test_sampling_returns_valid_text(jetspec_server, prompts):
    out = jetspec_server.generate(input_ids=prompts[0], max_new_tokens=32, temperature=0.7, top_p=0.95)
    assert len(out["output_ids"]) > 0 and out["text"].strip()
    assert all(0 <= t < 49152 for t in out["output_ids"])


def test_frontend_program_and_openai_client(jetspec_server, plain_server, smollm2_dir):
    import openai
    import sglang as sgl

    @sgl.function
    def answer(s, question):
        s += sgl.user(question)
        s += sgl.assistant(sgl.gen("ans", max_tokens=24, temperature=0))

    results = {}
    for name, server in (("spec", jetspec_server), ("plain", plain_server)):
        backend = sgl.RuntimeEndpoint(server.url)
        state = answer.run(question="What is 17 * 23?", backend=backend)
        results[name] = state["ans"]
    assert results["spec"] == results["plain"] and results["spec"].strip()

    client = openai.OpenAI(base_url=jetspec_server.url + "/v1", api_key="none")
    chat = client.chat.completions.create(model=smollm2_dir, messages=[{"role": "user", "content": "Say hi."}],
                                          max_tokens=16, temperature=0)
    ref = openai.OpenAI(base_url=plain_server.url + "/v1", api_key="none").chat.completions.create(
        model=smollm2_dir, messages=[{"role": "user", "content": "Say hi."}], max_tokens=16, temperature=0)
    assert chat.choices[0].message.content == ref.choices[0].message.content
    assert chat.usage.completion_tokens > 0


def test_budget_ladder_identical_to_plain(smollm2_dir, smollm2_head, server_logs, plain_outputs, prompts):
    """JETSPEC_BUDGET_LADDER 1:16,2:4,4:1 at depth 7: as requests finish the running batch walks 8 -> 1 through
    budget 1 (no draft), budget 4 (< L + 1) and budget 16; every output still equals plain decoding."""
    from jetspec_sglang.serving import Server, ServerSpec

    spec = ServerSpec(model=smollm2_dir, head=smollm2_head, budget=16, depth=7,
                      env={"JETSPEC_BUDGET_LADDER": "1:16,2:4,4:1", "JETSPEC_TREE_WIDTH": "4"})
    server = Server(spec, server_logs / "jetspec-ladder.log").start()
    try:
        outs = _run(server, prompts[:8], 8)
    finally:
        server.stop()
    for i, (spec_out, plain) in enumerate(zip(outs, plain_outputs)):
        assert spec_out["output_ids"] == plain["output_ids"], f"prompt {i} differs under the budget ladder"
