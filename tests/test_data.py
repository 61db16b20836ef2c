"""jetspec_sglang.data: real datasets from their packages, the fixed splits, prompt formats and bench files."""
import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
from transformers import AutoTokenizer  # noqa: E402

from jetspec_sglang.data import bench_file, benchmarks, pycode, sharegpt, splits  # noqa: E402
from jetspec_sglang.data.prompts import encode_chat, format_gsm8k, format_humaneval, normalize_text  # noqa: E402
from jetspec_sglang.data.prompts import render_chat  # noqa: E402
from jetspec_sglang.data.sources import source_path  # noqa: E402
from jetspec_sglang.models import prepare_model  # noqa: E402

# (train, eval) prompt counts, pinned: a change means a split moved
SPLIT_COUNTS = {"gsm8k": (1000, 319), "humaneval": (100, 64), "mtbench": (0, 80), "sharegpt": (16851, 140),
                "pycode": (len(pycode.read_pycode()), 0)}  # pycode: whatever this Python's stdlib holds (3.11: 2,906)


@pytest.fixture(scope="module")
def tiny_tok():
    return AutoTokenizer.from_pretrained(prepare_model("tiny-qwen3"))  # shared cache folder: built once


def test_benchmark_counts_and_fields():
    gsm8k, humaneval, mtbench = benchmarks.read_gsm8k(), benchmarks.read_humaneval(), benchmarks.read_mtbench()
    assert (len(gsm8k), len(humaneval), len(mtbench)) == (1319, 164, 80)
    assert gsm8k[0]["question"].startswith("Janet’s ducks lay 16 eggs") and gsm8k[0]["answer"].endswith("#### 18")
    assert [r["task_id"] for r in humaneval[:3]] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert humaneval[163]["task_id"] == "HumanEval/163" and "def " in humaneval[0]["prompt"]
    assert len({r["category"] for r in mtbench}) == 8 and all(len(r["turns"]) == 2 for r in mtbench)
    refs = benchmarks.read_mtbench_references()
    assert len(refs) == 30 and set(refs) <= {r["question_id"] for r in mtbench}


def test_gsm8k_reference_is_plain_prose():
    answer = "She sells 16 - 3 - 4 = <<16-3-4=9>>9 eggs.\nShe makes 9 * 2 = $<<9*2=18>>18.\n#### 1,018"
    assert benchmarks.gsm8k_final_answer(answer) == "1018"
    assert benchmarks.gsm8k_reference(answer) == (
        "She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\nThe answer is \\boxed{1018}.")


def test_sharegpt_full_file():
    convs = sharegpt.load_sharegpt()  # parses once (~1 s) and caches; later loads read the cache
    assert len(convs) == sharegpt.SHAREGPT_COMPLETE_RECORDS == 17671
    assert convs[0]["id"] == "QWJhYvA_0" and [c["index"] for c in convs[:3]] == [0, 1, 2]
    roles = {m["role"] for c in convs for m in c["messages"]}
    assert roles == {"user", "assistant", "system"}
    assert sum(len(c["messages"]) for c in convs) == 129_071


def test_sharegpt_truncated_copy_and_cache(tmp_path):
    data = source_path("sharegpt").read_bytes()[:6_000_000]
    short, longer = tmp_path / "short.json", tmp_path / "longer.json"
    short.write_bytes(data[:3_000_000])  # both cuts land inside a record
    longer.write_bytes(data)
    a = sharegpt.parse_sharegpt(short)
    b = sharegpt.load_sharegpt(longer, cache_dir=tmp_path / "cache")
    assert 0 < len(a) < len(b) and b[: len(a)] == a
    assert len(list((tmp_path / "cache").glob("*.pkl"))) == 1
    assert sharegpt.load_sharegpt(longer, cache_dir=tmp_path / "cache") == b
    complete = data[:3_000_000].decode("utf-8", "replace").rstrip().endswith("}")
    assert not complete  # the tail record really was cut


def test_sharegpt_unknown_speaker_fails_loudly(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "x_0", "conversations": [{"from": "robot", "value": "beep"}]}]))
    with pytest.raises(ValueError, match="'robot'.*ROLE_MAP"):
        sharegpt.parse_sharegpt(bad)


@pytest.mark.parametrize("dataset", sorted(SPLIT_COUNTS))
def test_split_counts_are_pinned(dataset):
    train, evals = splits.load_prompts(dataset, "train"), splits.load_prompts(dataset, "eval")
    assert (len(train), len(evals)) == SPLIT_COUNTS[dataset]
    assert {r.dataset for r in train + evals} <= {dataset}


def test_split_rules_are_by_index_and_id_hash():
    assert [r.id for r in splits.load_prompts("gsm8k", "eval")] == [f"gsm8k/{i}" for i in range(1000, 1319)]
    assert [r.id for r in splits.load_prompts("humaneval", "eval")] == [f"HumanEval/{i}" for i in range(100, 164)]
    assert splits.sharegpt_bucket("QWJhYvA_0") == splits.sharegpt_bucket("QWJhYvA_11")
    assert all(splits.sharegpt_bucket(r.id.split("/", 2)[2]) == 0 for r in splits.load_prompts("sharegpt", "eval"))
    with pytest.raises(ValueError, match="'test'.*train"):
        splits.load_prompts("gsm8k", "test")


def test_train_and_eval_are_disjoint_by_normalized_text():
    train = splits.training_prompts()
    assert len(train) == sum(SPLIT_COUNTS[d][0] for d in splits.TRAIN_DATASETS)
    evals = [r for d in SPLIT_COUNTS for r in splits.load_prompts(d, "eval")]
    eval_texts = {normalize_text(t) for r in evals for t in (r.source_text, r.text)}
    train_texts = {normalize_text(t) for r in train for t in (r.source_text, r.text)}
    assert eval_texts and not (train_texts & eval_texts)
    assert not ({r.id for r in train} & {r.id for r in evals})
    splits.check_no_eval_overlap([r.text for r in train[:500]])
    sneaky = "  " + splits.load_prompts("mtbench", "eval")[0].text.upper() + "\n"
    with pytest.raises(ValueError, match="evaluation prompt"):
        splits.check_no_eval_overlap(["fine", sneaky])


def test_prompt_formats_follow_the_method_doc():
    g = splits.load_prompts("gsm8k", "eval")[0]
    assert g.text == g.source_text + "\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert format_gsm8k("Q?") == "Q?\nPlease reason step by step, and put your final answer within \\boxed{}."
    assert format_humaneval("def f():\n") == ("Write a solution to the following problem and make sure that it "
                                              "passes the tests:\n```python\ndef f():\n\n```")
    h = splits.load_prompts("humaneval", "eval")[0]
    assert h.id == "HumanEval/100" and h.text == format_humaneval(h.source_text)
    m = splits.load_prompts("mtbench", "eval")
    assert [r.text for r in m] == [r["turns"][0] for r in benchmarks.read_mtbench()]


def test_chat_template_rendering(tiny_tok):
    records = splits.load_prompts("gsm8k", "eval")[:2]
    rendered = render_chat(tiny_tok, records)
    assert rendered[0] == f"<|im_start|>user\n{records[0].text}<|im_end|>\n<|im_start|>assistant\n"
    ids = encode_chat(tiny_tok, records)
    direct = tiny_tok.apply_chat_template([{"role": "user", "content": records[1].text}], add_generation_prompt=True,
                                          tokenize=True, return_dict=True)["input_ids"]
    assert ids[1] == list(direct)
    assert ids[0][0] == tiny_tok.convert_tokens_to_ids("<|im_start|>")
    tiny_tok_no_template = AutoTokenizer.from_pretrained(prepare_model("tiny-qwen3"))
    tiny_tok_no_template.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        render_chat(tiny_tok_no_template, "hi")


def test_bench_file_is_valid_sharegpt(tiny_tok, tmp_path):
    records = splits.load_prompts("mtbench", "eval") + splits.load_prompts("humaneval", "eval")[:3]
    path = bench_file.write_bench_sharegpt(tmp_path / "bench.json", records, tiny_tok)
    data = json.loads(path.read_text())
    assert [d["id"] for d in data] == [r.id for r in records]
    for d, r in zip(data, records):
        human, gpt = d["conversations"]
        assert (human["from"], gpt["from"]) == ("human", "gpt")
        assert human["value"] == render_chat(tiny_tok, [r])[0]
        assert len(tiny_tok(gpt["value"]).input_ids) >= 2  # bench_serving drops outputs under 2 tokens
    by_id = {d["id"]: d["conversations"][1]["value"] for d in data}
    assert by_id["mtbench/81"] == bench_file.PLACEHOLDER_ANSWER  # writing: no reference shipped
    assert by_id["mtbench/101"].startswith("If you have just overtaken the second person")
    he = by_id["HumanEval/100"]
    assert he.startswith("```python\n") and he.endswith("```") and "return [n + 2*i for i in range(n)]" in he


def test_bench_file_cli_raw(tmp_path, capsys):
    out = tmp_path / "raw.json"
    assert bench_file.main(["--datasets", "gsm8k", "--raw", "--limit", "5", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    data = json.loads(out.read_text())
    assert len(data) == 5 and data[0]["conversations"][0]["value"] == splits.load_prompts("gsm8k", "eval")[0].text
    assert data[0]["conversations"][1]["value"].endswith("}.")


@pytest.mark.slow
def test_smollm2_rendering_adds_its_default_system_prompt():
    tok = AutoTokenizer.from_pretrained(prepare_model("smollm2"))
    text = render_chat(tok, "What is 2+2?")[0]
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert encode_chat(tok, "What is 2+2?")[0][0] == tok.bos_token_id == 1


def test_pycode_prompts_from_a_source_tree(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "test").mkdir()
    doc = "Return the sum of a and b, both integers; raises TypeError when either is not an int at all."
    (tmp_path / "pkg" / "mod.py").write_text(
        f"import os\n\n@functools.cache\ndef add(a: int, b: int = 2) -> int:\n    \"\"\"{doc}\"\"\"\n    return a + b\n\n"
        f"def _private(x):\n    \"\"\"{doc}\"\"\"\n    return x\n\ndef short(x):\n    \"\"\"Too short.\"\"\"\n\n"
        f"def bare(x):\n    return x\n\nclass Box(Base, metaclass=M):\n    def get(self, key):\n        \"\"\"{doc}\"\"\"\n"
        f"        return self.d[key]\n\n    def _hidden(self):\n        \"\"\"{doc}\"\"\"\n\nclass _Hidden:\n"
        f"    def get(self):\n        \"\"\"{doc}\"\"\"\n")
    (tmp_path / "test" / "test_mod.py").write_text(f"def add(a, b):\n    \"\"\"{doc}\"\"\"\n")
    (tmp_path / "broken.py").write_text("def (:\n")
    rows = pycode.read_pycode(str(tmp_path))
    assert [r["id"] for r in rows] == ["pycode/pkg/mod.py:add", "pycode/pkg/mod.py:Box.get"]
    add, get = rows
    assert add["prompt"] == f"def add(a: int, b: int=2) -> int:\n    \"\"\"{doc}\"\"\"\n"
    assert add["solution"] == add["prompt"] + "    return a + b\n"  # the body is the reference; no decorator
    assert get["prompt"].startswith("class Box(Base, metaclass=M):\n\n    def get(self, key):\n")
    assert get["solution"].endswith("return self.d[key]\n") and "_hidden" not in get["solution"]
    with pytest.raises(ValueError, match="no documented public functions"):
        pycode.read_pycode(str(tmp_path / "test"))


def test_pycode_is_train_only_and_formatted_like_humaneval():
    import ast

    train = splits.load_prompts("pycode", "train")
    assert splits.load_prompts("pycode", "eval") == [] and len(train) > 2000
    assert len({r.id for r in train}) == len(train) and all(r.id.startswith("pycode/") for r in train)
    for r in train[::97]:
        assert r.text == format_humaneval(r.source_text) and r.reference.startswith("```python\n")
        stub = ast.parse(r.source_text).body[0]
        fn = stub.body[0] if isinstance(stub, ast.ClassDef) else stub
        assert len(fn.body) == 1 and ast.get_docstring(fn)  # the body is cut to the docstring
