"""Packed CPU weights in live servers (JETSPEC_CPU_PACKED_WEIGHTS, glue/cpu_packed.py), bf16 SmolLM2: the packed
products are bit-identical to stock SGLang's, so the same requests give the same tokens with packing on and off -
for plain decoding (`on` packs a plain server) and for JETSPEC (`auto`, the default, packs it). bf16 is not
token-exact against fp32 or across batch shapes, but one server configuration against itself at c1 is
deterministic, which is what makes this an exact check. The start-up log says what was packed.
"""
import re

import pytest
from sglang_fixtures import generate_greedy

pytestmark = pytest.mark.server

MAX_NEW = 32


def _serve(spec, log_path, prompts):
    from jetspec_sglang.serving import Server

    with Server(spec, log_path) as server:
        outs = generate_greedy(server, prompts, 1, MAX_NEW)
        assert server.get("/health")[0] == 200
        return [o["output_ids"] for o in outs], outs, server.log_path.read_text(errors="replace")


def test_plain_bf16_tokens_are_identical_with_packing_on_and_off(smollm2_dir, server_logs, chat_prompts):
    from jetspec_sglang.serving import ServerSpec

    runs = {}
    for setting in ("off", "on"):
        spec = ServerSpec(model=smollm2_dir, dtype="bfloat16", env={"JETSPEC_CPU_PACKED_WEIGHTS": setting})
        runs[setting] = _serve(spec, server_logs / f"plain-packed-{setting}.log", chat_prompts)
    assert "CPU packed weights: not packed (JETSPEC_CPU_PACKED_WEIGHTS=off)" in runs["off"][2]
    packed = re.search(r"CPU packed weights: (\d+) linear/LM-head weights packed", runs["on"][2])
    assert packed and int(packed.group(1)) == 30 * 4 + 1  # SmolLM2: qkv, o, gate_up, down per layer + LM head
    assert all(len(ids) == MAX_NEW for ids in runs["on"][0])
    assert runs["on"][0] == runs["off"][0]


def test_jetspec_bf16_tokens_are_identical_with_packing_on_and_off(smollm2_dir, smollm2_head, server_logs,
                                                                    chat_prompts):
    from jetspec_sglang.serving import ServerSpec

    runs = {}
    for setting in ("off", "auto"):
        spec = ServerSpec(model=smollm2_dir, head=smollm2_head, budget=8, depth=7, dtype="bfloat16",
                          env={"JETSPEC_BUDGET": "8", "JETSPEC_CPU_PACKED_WEIGHTS": setting})
        runs[setting] = _serve(spec, server_logs / f"jetspec-packed-{setting}.log", chat_prompts)
    log = runs["auto"][2]
    assert re.search(r"JETSPEC CPU packed weights \(target\): 121 weights", log)
    assert re.search(r"JETSPEC CPU packed weights \(draft\): \d+ weights", log)  # the head's own linears
    assert re.search(r"JETSPEC draft top-K projection: .*packed", log)
    assert "JETSPEC CPU packed weights" not in runs["off"][2]
    for out in runs["auto"][1]:
        assert out["meta_info"]["spec_verify_ct"] > 0  # decoded through the JETSPEC verify path
    assert runs["auto"][0] == runs["off"][0]
