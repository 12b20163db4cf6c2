#!/usr/bin/env bash
# One prepared GPU check for a single call of a GPU machine (under 8 minutes on an H100/H200):
#   1. pytest -m gpu: CUDA model vs CPU (fp32), NCCL in a one-process group, bf16 autocast targets, checkpointing;
#   2. the 17-layer step in fp32 and bf16 per batch size: ms/step, FLOPs (FlopCounterMode), MFU against the chip's
#      dense peak, memory per 100 s of batch audio (bench/model_step.py --device-report);
#   3. peak memory with and without activation checkpointing (bench/model_step.py --checkpointing-memory);
#   4. end-to-end training through the real dataloader: audio hours per second and the share of time spent
#      waiting for data (bench/train_throughput.py);
#   5. `nest-ssl tune-batch`: the largest batch per duration bucket (GPU: real steps and a search; CPU: the
#      fitted memory model), printed as the overrides to paste;
#   6. the step under torch.compile (nest_trainer.compile) against eager, fp32 and bf16 (bench/model_step.py
#      --device-report --with-compile);
#   7. a real training run with those batch sizes, compiled, whose telemetry (audio s/s, tokens/s, TFLOP/s, MFU,
#      data wait and padding shares) metrics.jsonl and the run summary report.
# Without a GPU the same script runs a CPU-sized version of every part and says so on its first line.
#
#   bash bench/gpu_check.sh            # output on stdout; also saved to $OUT/gpu_check.log when $OUT is set
#
# Builds .venv (make install) when it is missing: the device machine gets the working tree without it.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG_DIR=${OUT:-/tmp/nest_ssl_gpu_check}
mkdir -p "$LOG_DIR"
exec > >(tee "$LOG_DIR/gpu_check.log") 2>&1
start=$(date +%s)
say() { echo "[$(( $(date +%s) - start )) s] $*"; }
status=0
part() {  # part NAME TIMEOUT_S CMD...: runs one part, records a failure and goes on with the next part
  local name=$1 limit=$2; shift 2
  say "== $name"
  timeout "$limit" "$@"
  local rc=$?
  if [ $rc -ne 0 ]; then
    say "!! $name failed (exit $rc$([ $rc -eq 124 ] && echo ', timed out after '"$limit"' s'))"
    status=1
  fi
}

if [ ! -f .venv/.installed ]; then
  say "building .venv (make install; log in $LOG_DIR/install.log)"
  if ! make install > "$LOG_DIR/install.log" 2>&1; then
    tail -40 "$LOG_DIR/install.log"
    say "make install failed"
    exit 1
  fi
fi
PY=.venv/bin/python

if $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  GPU=1
  say "GPU run: $($PY -c 'import torch; print(torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)')"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
else
  GPU=0
  say "NO GPU on this machine: a CPU-sized version of every part (small model and batches); these are NOT GPU figures"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi

# 1. GPU-marked tests (they skip without CUDA; the CPU version runs the bf16 and checkpointing tests instead).
if [ $GPU = 1 ]; then
  part "pytest -m gpu" 240 $PY -m pytest -q -rs -m gpu tests/test_gpu.py tests/test_data_device_augment.py
else
  part "pytest (CPU stand-ins: bf16 autocast, checkpointing)" 240 \
    $PY -m pytest -q -rs tests/test_gpu.py tests/test_precision.py tests/test_checkpointing.py
fi

# 2. The step: fp32 and bf16, MFU, memory per batch duration.
if [ $GPU = 1 ]; then
  part "17-layer step, fp32 and bf16" 200 \
    $PY bench/model_step.py --device-report --batches 8x16,32x16 --warmup 2 --steps 4 --threads 4
else
  part "step (CPU-sized: 2 layers, short batches)" 120 \
    $PY bench/model_step.py --device-report --layers 2 --batches 1x2,2x4 --warmup 1 --steps 1 --threads 1
fi

# 3. Activation checkpointing: memory and time.
if [ $GPU = 1 ]; then
  part "activation checkpointing, 17 layers, 32 x 16 s" 150 \
    $PY bench/model_step.py --checkpointing-memory --batch-size 32 --seconds 16 --warmup 1 --steps 2 --threads 4
else
  # 16 s: tensors above glibc's mmap threshold, so RSS follows live memory (tiny ones stay in its heap).
  part "activation checkpointing (CPU-sized: 4 layers, 1 x 16 s)" 120 \
    $PY bench/model_step.py --checkpointing-memory --layers 4 --batch-size 1 --seconds 16 --warmup 1 --steps 1 --threads 1
fi

# 4. End-to-end training through the real dataloader.
DATA="$LOG_DIR/throughput_data"
if [ $GPU = 1 ]; then
  # 10 batches of 32 utterances (8-12 s) in one epoch: 3 warm-up + 7 measured steps (the data takes ~1 min to write).
  [ -f "$DATA/train_manifest.json" ] || $PY recipes/nest/make_dummy_data.py --out-dir "$DATA" --num-train 320 \
    --num-val 2 --min-seconds 8 --max-seconds 12 > /dev/null
  part "training throughput, real dataloader (bf16-mixed)" 200 \
    $PY bench/train_throughput.py --gpu --data-dir "$DATA" --steps 7 --warmup 3 --rounds 1
else
  part "training throughput (CPU-sized: tiny config)" 120 \
    $PY bench/train_throughput.py --steps 4 --warmup 1 --rounds 1
fi

# 5. Batch sizes per bucket within a memory budget.
TUNED="$LOG_DIR/tune_batch.txt"
if [ $GPU = 1 ]; then
  part "tune-batch (17 layers, bf16-mixed, GPU search)" 240 \
    bash -c "$PY -m nest_ssl.cli tune-batch --bins 5,10,15,20 trainer.precision=bf16-mixed | tee $TUNED"
else
  part "tune-batch (CPU-sized: tiny config, fitted memory model)" 150 \
    bash -c "$PY -m nest_ssl.cli tune-batch --config-name nest_tiny --bins 2,4,8 --memory-gb 0.5 --max-probe-seconds 2 --device cpu | tee $TUNED"
fi

# 6. torch.compile against eager.
if [ $GPU = 1 ]; then
  part "17-layer step, compiled vs eager, fp32 and bf16" 300 \
    $PY bench/model_step.py --device-report --with-compile --batches 32x16 --warmup 3 --steps 4 --threads 4
else
  part "step compiled vs eager (CPU-sized: 2 layers, 1 x 2 s)" 300 \
    $PY bench/model_step.py --device-report --with-compile --layers 2 --batches 1x2 --warmup 2 --steps 1 --threads 1
fi

# 7. Telemetry of a real training run (the batch sizes of part 5, compiled on the GPU).
TEL="$LOG_DIR/telemetry_run"
rm -rf "$TEL"
if [ $GPU = 1 ]; then
  [ -f "$DATA/train_manifest.json" ] || $PY recipes/nest/make_dummy_data.py --out-dir "$DATA" --num-train 320 \
    --num-val 2 --min-seconds 8 --max-seconds 12 > /dev/null
  # the dummy data are 8-12 s: the tuned 15 s bucket holds them all
  TUNE_ARGS=$(tail -1 "$TUNED" 2>/dev/null | grep -o '++model.train_ds.*' || echo "model.train_ds.batch_size=32")
  part "training run with telemetry (bf16-mixed, compiled, tuned batch sizes)" 300 \
    $PY -m nest_ssl.cli train model.train_ds.manifest_filepath="$DATA/train_manifest.json" \
      model.validation_ds.manifest_filepath="$DATA/val_manifest.json" $TUNE_ARGS trainer.precision=bf16-mixed \
      trainer.max_steps=30 trainer.log_every_n_steps=10 trainer.val_check_interval=1000 trainer.devices=1 model.train_ds.drop_last=false \
      model.train_ds.num_workers=8 +nest_trainer.compile.enabled=true +nest_trainer.compile.pad_to_multiple=16 \
      trainer.enable_progress_bar=false exp_manager.exp_dir="$TEL" \
      ++exp_manager.checkpoint_callback_params.every_n_train_steps=30
else
  DUMMY="$LOG_DIR/telemetry_data"
  [ -f "$DUMMY/train_manifest.json" ] || $PY recipes/nest/make_dummy_data.py --out-dir "$DUMMY" --num-train 16 \
    --num-val 2 --min-seconds 1 --max-seconds 3 > /dev/null
  part "training run with telemetry (CPU-sized: tiny config, eager, tuned batch sizes)" 200 \
    $PY -m nest_ssl.cli train --config-name nest_tiny model.train_ds.manifest_filepath="$DUMMY/train_manifest.json" \
      model.validation_ds.manifest_filepath="$DUMMY/val_manifest.json" \
      $(tail -1 "$TUNED" 2>/dev/null | grep -o '++model.train_ds.*') trainer.max_steps=6 trainer.log_every_n_steps=3 model.train_ds.drop_last=false \
      trainer.val_check_interval=1000 trainer.enable_progress_bar=false exp_manager.exp_dir="$TEL" \
      ++exp_manager.checkpoint_callback_params.every_n_train_steps=6
fi
RUN_DIR=$(dirname "$(find "$TEL" -name metrics.jsonl | head -1)" 2>/dev/null)
if [ -n "$RUN_DIR" ] && [ -f "$RUN_DIR/metrics.jsonl" ]; then
  say "telemetry (metrics.jsonl, last log step):"
  $PY -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if 'audio_per_s' in l][-1]; print({k: r.get(k) for k in ('step','audio_per_s','tokens_per_s','step_tflop','tflops_per_device','mfu','data_wait_share','padding_share')})" "$RUN_DIR/metrics.jsonl"
  $PY local/summary.py summary "$RUN_DIR" --train-cuts none --val-cuts none | grep -A1 "throughput:"
else
  say "!! no metrics.jsonl from the telemetry run"
  status=1
fi

say "done ($([ $status = 0 ] && echo 'all parts passed' || echo 'SOME PARTS FAILED: see above'); log $LOG_DIR/gpu_check.log)"
exit $status
