#!/usr/bin/env bash
# Train the SmolLM2-135M-Instruct heads end to end on ONE CUDA GPU in under 10 minutes (H200: regeneration ~2.5 min,
# four heads trained side by side ~5 min), with nothing but python3 + torch + transformers + accelerate there.
#
#   Here (a machine with the data packages):  bash scripts/gpu_pack.sh        # -> .gpu/ (ignored by git)
#   There, from the repository root:          bash scripts/gpu_train_smollm2.sh   # results -> $OUT (or runs/gpu)
#
# .gpu/{a,b}/ hold the SmolLM2 GGUF in two parts (a machine call carries at most 64 MiB), the gguf wheel and
# prompts.jsonl.gz (the tokenised train-split plan); .gpu/c/natural.jsonl.xz (optional, its own call: natural
# training text, used beside the regenerated answers). Stages: 1. dequantise the GGUF into an HF folder; 2. `train generate` in GEN_PROCS
# processes sharing the GPU until GEN_DEADLINE s; 3. `train online` for four heads at once, each for TRAIN_BUDGET s:
# causal (the shipped head), bidirectional (the comparison), causal on half the data and causal with 3 layers (the
# learning-curve questions of the head README); 4. the data, the causal and bidirectional heads and every run's
# metrics are packed into $OUT/results.tar.xz.part-* (15 MB pieces), the logs into $OUT/logs.tgz.
# Multi-GPU: the same `online` command under `torchrun --nproc-per-node 8` (see the head README).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
RESULTS=${OUT:-$ROOT/runs/gpu_out}
WORK=${JETSPEC_GPU_WORK:-runs/gpu}  # relative: the paths recorded in training_state.json stay machine-free
GEN_PROCS=${GEN_PROCS:-6}
GEN_DEADLINE=${GEN_DEADLINE:-120}
GEN_KILL=${GEN_KILL:-160}
TRAIN_BUDGET=${TRAIN_BUDGET:-280}
STEPS=${STEPS:-100000}
DEVICE=${DEVICE:-cuda}
# SMOKE=1: the same stages on the random tiny-qwen3 target (built there from its seed) in about a minute: a check of
# the machine and of this script before the real run spends ten minutes of it.
SMOKE=${SMOKE:-0}
mkdir -p "$RESULTS" "$WORK/logs"
LOGS=$WORK/logs
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
t0=$SECONDS
log() { echo "[gpu_train +$((SECONDS - t0))s] $*"; }

if ls .gpu/*/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/jetspec_site .gpu/*/*.whl || exit 3
  export PYTHONPATH="/tmp/jetspec_site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
GGUF=.gpu/SmolLM2-135M-Instruct.Q4_1.gguf
PROMPTS=$WORK/prompts.jsonl
export JETSPEC_SMOLLM2_GGUF="$ROOT/$GGUF" JETSPEC_CACHE="$ROOT/$WORK/cache"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$LOGS/env.txt" 2>&1
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  >> "$LOGS/env.txt" 2>&1
cat "$LOGS/env.txt"

log "1. target"
NAME=smollm2
HEAD=(--mask-token-id 3 --target-layer-ids 1,10,18,27 --block-size 16)
L3_TAPS=1,10,18,26  # 3 draft layers start as copies of target layers 27-29 (init_head.py): deepest tap 26
if [ "$SMOKE" = 1 ]; then
  NAME=tiny-qwen3 GEN_DEADLINE=15 GEN_KILL=${SMOKE_GEN_KILL:-60} TRAIN_BUDGET=20 GEN_MAX_NEW=64 GEN_BATCH=${GEN_BATCH:-16}
  HEAD=(--mask-token-id 3 --target-layer-ids 0,1 --block-size 8 --intermediate-size 256 --num-heads 4
        --num-kv-heads 2 --head-dim 32)
  L3_TAPS=0
  gzip -dc .gpu/*/prompts-tiny.jsonl.gz > "$PROMPTS" || exit 3
else
  if [ ! -f "$GGUF" ]; then cat .gpu/*/"$(basename "$GGUF")".part-* > "$GGUF" || exit 3; fi
  gzip -dc .gpu/*/prompts.jsonl.gz > "$PROMPTS" || exit 3
fi
MODEL=$(python3 -m jetspec_sglang.models prepare $NAME --out "$WORK/$NAME" 2>"$LOGS/prepare.log" | tail -1)
[ -d "$MODEL" ] || { cat "$LOGS/prepare.log"; exit 4; }

log "2. regeneration: $GEN_PROCS processes until ${GEN_DEADLINE}s"
for r in $(seq 0 $((GEN_PROCS - 1))); do
  timeout "$GEN_KILL" python3 -m jetspec_sglang.train generate --model "$MODEL" --prompts "$PROMPTS" \
    --out "$WORK/data" --device "$DEVICE" --batch-size "${GEN_BATCH:-256}" --max-new-tokens "${GEN_MAX_NEW:-512}" --rank "$r" \
    --world "$GEN_PROCS" --deadline-s "$GEN_DEADLINE" > "$LOGS/generate.$r.log" 2>&1 &
done
wait
cat "$WORK"/data/responses.rank*.jsonl > "$WORK/data/responses.jsonl"
DATA="$WORK/data/responses.jsonl"
if [ "$SMOKE" != 1 ] && ls .gpu/*/natural.jsonl.xz >/dev/null 2>&1; then  # natural text beside the regenerations
  xz -dc .gpu/*/natural.jsonl.xz > "$WORK/data/natural.jsonl" || exit 3
  DATA="$DATA,$WORK/data/natural.jsonl"
fi
python3 - "$DATA" <<'EOF' | tee "$LOGS/data_summary.txt"
import collections, json, sys
recs = [json.loads(x) for path in sys.argv[1].split(",") for x in open(path) if x.strip()]
by = collections.Counter()
for r in recs:
    t = r["temperature"]
    by[(r["dataset"], "natural" if t is None else f"T={t:g}")] += len(r["response_ids"])
print(f"{len(recs)} sequences, {sum(by.values())} response tokens, "
      f"{sum(len(r['prompt_ids']) + len(r['response_ids']) for r in recs)} tokens in all")
for (d, t), n in sorted(by.items()):
    print(f"  {d} {t}: {n} response tokens")
EOF

log "3. four heads side by side, ${TRAIN_BUDGET}s each"
COMMON=(--model "$MODEL" --data "$DATA" --device "$DEVICE" --steps "$STEPS" --time-budget-s
        "$TRAIN_BUDGET" --seqs-per-step 16 --anchors-per-seq 64 --max-seq-len 1024 --lr 8e-4 --warmup-steps 100
        --eval-every 250 --log-every 50 --ckpt-every 250 --eval-sequences 48 "${HEAD[@]}")
run() {  # name, extra args...
  local name=$1; shift
  timeout $((TRAIN_BUDGET + 150)) python3 -m jetspec_sglang.train online "${COMMON[@]}" --out "$WORK/$name" "$@" \
    > "$LOGS/train.$name.log" 2>&1
  echo "$name rc=$?" >> "$LOGS/train_status.txt"
}
run causal --head-type causal &
run bidirectional --head-type bidirectional &
run causal-half-data --head-type causal --data-fraction 0.5 &
run causal-3layers --head-type causal --num-layers 3 --target-layer-ids "$L3_TAPS" &
wait
cat "$LOGS/train_status.txt"

log "4. pack: data + the causal and bidirectional heads + every run's metrics and curve (<= 64 MiB back)"
tar -C "$WORK" -cf - data/responses.jsonl causal/head bidirectional/head */metrics.jsonl */curve.png */config.json \
  */head/training_state.json 2>/dev/null | xz -T0 -6 > "$WORK/results.tar.xz"
split -b 15M -d "$WORK/results.tar.xz" "$RESULTS/results.tar.xz.part-"
tar -C "$WORK" -czf "$RESULTS/logs.tgz" logs
for f in "$WORK"/logs/train.*.log; do echo "== $f"; tail -c 600 "$f"; echo; done
ls -la "$RESULTS"
log "done"
