#!/usr/bin/env bash
# The project's test command (README, second command; .ci/run runs exactly this): set-up, then the whole suite,
# including the slow tests and the real SGLang server tests on 127.0.0.1. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
export JETSPEC_RUN_SLOW=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
.venv/bin/python -m pytest -q "$@"
rc=$?
set -e
# pytest exits 5 when nothing was collected: that is a failure of the suite, not a pass.
exit $rc
