#!/usr/bin/env bash
# What a GPU machine can tell that this project's CPU machines cannot (issues 20 and 25), as ONE
# prepared call of the device tool (15 minutes of GPU time a session, no network there):
#
#   bash benchmarks/gpu_wheels.sh                                   # here: build .whl/ (about 5 MB)
#   device run: command "bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 580
#
# Every step runs under its own time limit and is recorded in $OUT/steps.jsonl (name, exit code,
# seconds); the whole log is $OUT/gpu_check.log; the serve benchmark's figures are
# $OUT/serve_small.json and $OUT/serve_large.json; the runs' metrics $OUT/metrics_*.jsonl (at most 8
# files come back). A failing step does not stop the others. Steps:
#   env      nvidia-smi, python, torch and CUDA
#   install  a venv over the image's python (--system-site-packages: its torch) + .whl/, offline
#   train    the quickstart on the GPU (binary_ranking, sample data, default tiny model), float32
#   bf16     the same with trainer.precision=bf16-mixed (bf16 compute, float32 main weights)
#   score    score + evaluate + export of the float32 run; the GPU's rewards against a CPU process's
#   shape    bench_vs_trl's shape (4 layers, hidden 256) for 40 steps: steps/s and tokens/s
#   serve    benchmarks/bench_serve.py on the small and on the 4-layer model: batching gain, p50/p99,
#            serve / offline (issue 25's 4x batching goal is a GPU figure)
#   pytest   the engine's model, trainer and checkpoint tests on the GPU machine
#
# Dry run on a CPU machine (checks this script, not the GPU):
#   GPU_CHECK_PYTHON=.venv/bin/python GPU_CHECK_NO_INSTALL=1 GPU_CHECK_QUICK=1 OUT=/tmp/gc bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
: > "$OUT/steps.jsonl"
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
PY=${GPU_CHECK_PYTHON:-python3}
QUICK=${GPU_CHECK_QUICK:-0}
steps() { if [ "$QUICK" = 1 ]; then echo "$2"; else echo "$1"; fi; }

step() {  # step NAME SECONDS COMMAND...: run it, log it, record its exit code and time
    local name=$1 limit=$2
    shift 2
    echo "=== $name ($(date -u +%H:%M:%S)): $*" >> "$LOG"
    local t0 rc secs
    t0=$(date +%s%N)
    timeout "$limit" "$@" >> "$LOG" 2>&1
    rc=$?
    secs=$(( ($(date +%s%N) - t0) / 1000000 ))
    secs="$((secs / 1000)).$(printf '%03d' $((secs % 1000)))"
    echo "=== $name: exit $rc after ${secs}s" >> "$LOG"
    echo "{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $secs}" >> "$OUT/steps.jsonl"
    echo "$name: exit $rc after ${secs}s"
    return 0
}

step env 60 bash -c "nvidia-smi || true; $PY -c 'import sys, torch; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else \"-\")'"

if [ "${GPU_CHECK_NO_INSTALL:-0}" = 1 ]; then
    RM="$PY -m rm_registry"
    VPY=$PY
else
    # --no-deps: the image's packages stand in for the rest (pip check says what differs, for the log)
    step install 240 bash -c "$PY -m venv --system-site-packages $WORK/venv && $WORK/venv/bin/pip install -q --no-deps --no-index .whl/*.whl && ($WORK/venv/bin/pip check || true) && $WORK/venv/bin/rm-registry list"
    RM="$WORK/venv/bin/python -m rm_registry"
    VPY=$WORK/venv/bin/python
fi

TINY_STEPS=$(steps 200 4)
step train 300 $RM train binary_ranking --output "$WORK/rm" --no-progress "trainer.rm.max_steps=$TINY_STEPS"
cp "$WORK/rm/metrics.jsonl" "$OUT/metrics_train.jsonl" 2>/dev/null

step bf16 240 $RM train binary_ranking --output "$WORK/rm_bf16" --no-progress "trainer.rm.max_steps=$TINY_STEPS" \
    trainer.precision=bf16-mixed
cp "$WORK/rm_bf16/metrics.jsonl" "$OUT/metrics_bf16.jsonl" 2>/dev/null

VAL=plugins/binary_ranking/src/rm_binary_ranking/data/validation.jsonl
printf '%s\n' '{"text": "User: What is 2+2?\nAssistant: 4, happy to help!"}' \
    '{"prompt": "User: Hi!\nAssistant: ", "response": "Hello, how can I help?"}' > "$WORK/texts.jsonl"
step score 240 bash -c "$RM score --checkpoint $WORK/rm --data $WORK/texts.jsonl --output $WORK/gpu.jsonl --no-progress \
  && CUDA_VISIBLE_DEVICES= $RM score --checkpoint $WORK/rm --data $WORK/texts.jsonl --output $WORK/cpu.jsonl --no-progress \
  && paste -d' ' $WORK/gpu.jsonl $WORK/cpu.jsonl \
  && $RM evaluate --checkpoint $WORK/rm --data $VAL --json --no-progress \
  && $RM export --checkpoint $WORK/rm --output $WORK/hf && ls $WORK/hf"

SHAPE_STEPS=$(steps 40 2)
step shape 300 $RM train binary_ranking --output "$WORK/rm_shape" --no-progress model.num_layers=4 model.hidden_size=256 \
    model.num_attention_heads=4 model.encoder_seq_length=1024 model.micro_batch_size=8 model.global_batch_size=8 \
    "trainer.rm.max_steps=$SHAPE_STEPS" "trainer.rm.save_interval=$SHAPE_STEPS"
cp "$WORK/rm_shape/metrics.jsonl" "$OUT/metrics_shape.jsonl" 2>/dev/null

SERVE_TEXTS=$(steps 1024 64)
SERVE_ROUNDS=$(steps 2 1)
step serve_small 240 bash -c "PATH=$(dirname "$VPY"):\$PATH $VPY benchmarks/bench_serve.py --texts $SERVE_TEXTS --rounds $SERVE_ROUNDS --json > $OUT/serve_small.json"
step serve_large 240 bash -c "PATH=$(dirname "$VPY"):\$PATH $VPY benchmarks/bench_serve.py --checkpoint $WORK/rm_shape --texts $SERVE_TEXTS --rounds $SERVE_ROUNDS --json > $OUT/serve_large.json"

step pytest 300 $VPY -m pytest -q -x -p no:cacheprovider tests/engine/test_model.py tests/engine/test_trainer.py \
    tests/engine/test_checkpoint.py

echo "done; see $OUT (steps.jsonl, gpu_check.log)"
rm -rf "$WORK"
