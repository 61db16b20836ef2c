#!/usr/bin/env bash
# Prepare .gpu/ (ignored by git) for scripts/gpu_train_smollm2.sh on a GPU machine that has no data packages and
# no package index: .gpu/a = first half of the SmolLM2 GGUF + the gguf wheel; .gpu/b = second half + the
# tokenised train-split prompts; .gpu/c = natural training text. Each travels in its own call (64 MiB a call).
# Run inside .venv.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PLAN=${PLAN:-gsm8k:1000:0,gsm8k:1000:0.7,gsm8k:1000:1.0,humaneval:100:0,humaneval:100:0.6,humaneval:100:0.8,humaneval:100:1.0,pycode:2900:0,pycode:2900:0.7,sharegpt:20000:0,sharegpt:6000:0.7}
rm -rf .gpu && mkdir -p .gpu/a .gpu/b
GGUF=$(python -c 'from jetspec_sglang.models import _smollm2_gguf; print(_smollm2_gguf())')
half=$(( ($(stat -c %s "$GGUF") + 1) / 2 ))
split -b "$half" -d "$GGUF" ".gpu/a/$(basename "$GGUF").part-"
mv ".gpu/a/$(basename "$GGUF").part-01" .gpu/b/
python -m pip download -q --no-deps --only-binary=:all: -d .gpu/a gguf==0.19.0
python -m jetspec_sglang.train prompts --model smollm2 --plan "$PLAN" --max-prompt-len 384 --seed 0 \
  --out .gpu/prompts.jsonl
gzip -9c .gpu/prompts.jsonl > .gpu/b/prompts.jsonl.gz && rm .gpu/prompts.jsonl
# .gpu/c (a third call, optional): natural training text (train/natural.py), the datasets' own answers to the
# train-split prompts; gpu_train_smollm2.sh trains on it beside the regenerated answers when it is there.
NATURAL_PLAN=${NATURAL_PLAN:-sharegpt:8000,gsm8k:0,humaneval:0,pycode:0}
mkdir -p .gpu/c
python -m jetspec_sglang.train natural --model smollm2 --plan "$NATURAL_PLAN" --max-prompt-len 384 \
  --max-response-len 1024 --out .gpu/natural.jsonl
xz -T0 -6c .gpu/natural.jsonl > .gpu/c/natural.jsonl.xz && rm .gpu/natural.jsonl
du -sh .gpu/a .gpu/b .gpu/c
