"""A JETSPEC server started the way a user starts it, without --dtype (issue: the first request killed the
scheduler with `Half != BFloat16` in the head's fc): SGLang resolves the fp32 SmolLM2 target to float16 and the
shipped bf16 head must run with it (glue/args.resolve_dtype). Greedy requests are served, singly and batched,
and the server keeps serving; outputs are compared with a plain server started the same way.
"""

import pytest
from sglang_fixtures import generate_greedy

pytestmark = pytest.mark.server

MAX_NEW = 24


def _run(server, prompts, concurrency):
    return generate_greedy(server, prompts, concurrency, MAX_NEW)


def test_default_flags_serve_greedy_requests(smollm2_dir, smollm2_head, server_logs, chat_prompts):
    from jetspec_sglang.serving import Server, ServerSpec

    plain_spec = ServerSpec(model=smollm2_dir, dtype=None)
    spec = ServerSpec(model=smollm2_dir, head=smollm2_head, budget=16, depth=15, dtype=None)
    assert "--dtype" not in spec.command(0)
    with Server(plain_spec, server_logs / "plain-default-dtype.log") as plain:
        reference = _run(plain, chat_prompts, 1)
    with Server(spec, server_logs / "jetspec-default-dtype.log") as server:
        single = _run(server, chat_prompts, 1)
        batched = _run(server, chat_prompts, len(chat_prompts))
        assert server.get("/health")[0] == 200
        log = server.log_path.read_text(errors="replace")
    assert "--dtype auto resolves to float16 for the target; the head (stored as bfloat16) runs in float16" in log
    same = 0
    for out, ref in zip(single + batched, reference + reference):
        assert out["meta_info"]["completion_tokens"] == len(out["output_ids"]) > 0
        assert out["meta_info"]["spec_verify_ct"] > 0  # decoded through the JETSPEC verify path
        same += out["output_ids"] == ref["output_ids"]
    print(f"fp16 JETSPEC outputs equal to plain fp16 decoding: {same}/{2 * len(chat_prompts)}")
