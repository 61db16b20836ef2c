#!/usr/bin/env bash
# The project's main job (README, first command): set-up, then the CPU demo server - SmolLM2-135M-Instruct and
# the shipped JetSpec head in real SGLang servers, JETSPEC against plain decoding. Extra arguments go to the demo
# (python -m jetspec_sglang.demo --help).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m jetspec_sglang.demo "$@"
