#!/usr/bin/env bash
# NEST pretraining from NeMo manifests: for users who already have NeMo JSON-lines manifests (audio_filepath,
# duration, optional offset) for training and validation, and optionally a noise manifest.
#
#   ./run.sh --train-manifest /data/train.json --val-manifest /data/dev.json --noise-manifest /data/noise.json
#   ./run.sh --train-manifest a.json,b.json --val-manifest dev.json --ngpus 8 --use-shar true
#
# Stages 0-3 (here) turn the NeMo manifests into training and validation windows and a noise set; stages 4-7
# (Shar shards, bucket bins, training, export) are the ones every recipe shares (local/stages.sh).
set -euo pipefail
. "$(dirname "$0")/../../local/common.sh"   # log, die, stage_begin/stage_end, recipe_cd, nest-ssl, $nest_repo

stage=0
stop_stage=7
force=false                      # true: rerun every stage in [stage, stop_stage] even when up to date

train_manifest=""                # NeMo manifest(s), comma-separated (required)
val_manifest=""                  # NeMo manifest(s), comma-separated (required)
noise_manifest=""                # optional: a NeMo or lhotse noise manifest, or a folder of noise audio (MUSAN)
noise_parts=noise,music          # MUSAN parts, when --noise-manifest is a MUSAN folder
noise_window=10

data_dir=data
exp_dir=exp
min_duration=1.0                 # training windows (seconds): dropped below, split above max
max_duration=20.0
nj=8                             # parallel jobs (stage 4)
seed=0

# Stages 4-7 (local/stages.sh)
use_shar=false                   # stage 4: globally shuffled Lhotse Shar shards for training
shard_size=1000
num_buckets=30                   # stage 5: bucket duration bins for the DynamicBucketingSampler
config_path=$nest_repo/nest_ssl/conf
config_name=nest_fast-conformer
exp_name=""                      # the run folder is <exp-dir>/<exp-name> (default: the config name)
ngpus=1                          # GPUs per node (0: train on the CPU, one process)
nnodes=1
node_rank=0
master_addr=localhost
master_port=29500
launcher=torchrun                # stage 6: torchrun on each node, or srun (in a SLURM job: a task per device)
save_every_steps=1000           # stage 6: the last checkpoint every N optimizer steps (0: the config decides)
val_every_steps=2500            # stage 6: validation every N optimizer steps, across epochs (0: the config decides)
train_opts=""                    # extra config overrides for train.py, e.g. "trainer.max_steps=100000"

help_message="Usage: $0 --train-manifest LIST --val-manifest LIST [--noise-manifest M] [options]
Stages: 0 check the manifests  1 NeMo -> Lhotse cuts  2 noise set (when --noise-manifest)  3 training windows
        4 Shar shards (--use-shar true)  5 bucket bins  6 training (torchrun or srun)  7 export (.nemo, encoder-only), summary
Options (default):
  --stage N ($stage)  --stop-stage N ($stop_stage)  --force true|false ($force)
  --train-manifest LIST  --val-manifest LIST  --noise-manifest M  --noise-parts LIST ($noise_parts)
  --noise-window SEC ($noise_window)  --data-dir DIR ($data_dir)  --exp-dir DIR ($exp_dir)
  --min-duration SEC ($min_duration)  --max-duration SEC ($max_duration)  --nj N ($nj)  --seed N ($seed)
  --use-shar true|false ($use_shar)  --shard-size N ($shard_size)  --num-buckets N ($num_buckets)
  --config-path DIR ($config_path)  --config-name NAME ($config_name)  --exp-name NAME (config name)
  --ngpus N ($ngpus)  --nnodes N ($nnodes)  --node-rank N ($node_rank)  --master-addr HOST ($master_addr)
  --master-port PORT ($master_port)  --save-every-steps N ($save_every_steps)  --val-every-steps N ($val_every_steps)
  --launcher torchrun|srun ($launcher)
  --train-opts 'key=value ...' ($train_opts)"

. "$nest_repo/local/parse_options.sh"
check_int 0 save_every_steps val_every_steps stage stop_stage seed ngpus node_rank
check_int 1 nj shard_size num_buckets nnodes master_port
check_float 0 noise_window min_duration max_duration
# Manifest lists are comma-separated: make each relative entry absolute before moving into the recipe folder.
abs_list() {
  local out=() p
  IFS=, read -r -a items <<< "$1"
  for p in "${items[@]}"; do
    [[ -z "$p" || "$p" == /* ]] && out+=("$p") || out+=("$PWD/$p")
  done
  (IFS=,; echo "${out[*]}")
}
train_manifest=$(abs_list "$train_manifest")
val_manifest=$(abs_list "$val_manifest")
noise_manifest=$(abs_list "$noise_manifest")
recipe_cd data_dir exp_dir config_path

manifests=$data_dir/manifests
done_dir=$data_dir/.done
IFS=, read -r -a train_list <<< "$train_manifest"
IFS=, read -r -a val_list <<< "$val_manifest"
noise_cuts=""
[ -n "$noise_manifest" ] && noise_cuts=$data_dir/noise/noise_cuts.jsonl.gz

if stage_in_range 0; then
  log "Stage 0: check the manifests"
  [ ${#train_list[@]} -gt 0 ] || die "give --train-manifest (NeMo JSON lines: audio_filepath, duration per line)"
  [ ${#val_list[@]} -gt 0 ] || die "give --val-manifest (NeMo JSON lines, held out from training)"
  for m in "${train_list[@]}" "${val_list[@]}" ${noise_manifest:+"$noise_manifest"}; do
    [ -e "$m" ] || die "not found: $m"
  done
  log "train: ${train_list[*]}; validation: ${val_list[*]}; noise: ${noise_manifest:-none (speech-only mixing)}"
fi

# Stages 1-5 write into $data_dir: one run at a time prepares it (node 0 holds the lock; local/stages.sh drops it
# before training, so other runs can train from the same data folder meanwhile; see egs/librilight).
if [ "$node_rank" -eq 0 ] && [ "$stop_stage" -ge 1 ] && [ "$stage" -le 5 ]; then recipe_lock "$data_dir"; fi

# Stage 1 converts each manifest to a Lhotse CutSet (audio headers checked once, here, instead of at every epoch).
stage1_io=()
train_cuts=()
val_cuts=()
for i in "${!train_list[@]}"; do
  stage1_io+=("in:${train_list[$i]}" "out:$manifests/train_$i.jsonl.gz")
  train_cuts+=("$manifests/train_$i.jsonl.gz")
done
for i in "${!val_list[@]}"; do
  stage1_io+=("in:${val_list[$i]}" "out:$manifests/val_$i.jsonl.gz")
  val_cuts+=("$manifests/val_$i.jsonl.gz")
done
if stage_begin 1 "NeMo manifests to Lhotse cuts" "${stage1_io[@]}"; then
  mkdir -p "$manifests"
  for i in "${!train_list[@]}"; do
    nest-ssl manifest from-nemo "${train_list[$i]}" "$manifests/train_$i.jsonl.gz"
  done
  for i in "${!val_list[@]}"; do
    nest-ssl manifest from-nemo "${val_list[$i]}" "$manifests/val_$i.jsonl.gz"
  done
  stage_end 1
fi

if [ -z "$noise_manifest" ]; then
  stage_in_range 2 && log "Stage 2: no --noise-manifest: training mixes speech only"
elif stage_begin 2 "noise set from $noise_manifest" opt:noise_parts="$noise_parts" opt:noise_window="$noise_window" \
    in:"$noise_manifest" out:"$noise_cuts"; then
  nest-ssl prepare noise "$noise_manifest" "$data_dir/noise" --parts "$noise_parts" --window "$noise_window"
  stage_end 2
fi

if stage_begin 3 "training and validation windows" opt:min_duration="$min_duration" opt:max_duration="$max_duration" \
    "${train_cuts[@]/#/in:}" "${val_cuts[@]/#/in:}" out:"$data_dir/cuts/train.jsonl.gz" \
    out:"$data_dir/cuts/val.jsonl.gz"; then
  # Without VAD, each utterance is split into the fewest equal windows no longer than --max-duration.
  mkdir -p "$data_dir/cuts"
  nest-ssl cuts windows "$(IFS=,; echo "${train_cuts[*]}")" "$data_dir/cuts/train.jsonl.gz" \
    --min-duration "$min_duration" --max-duration "$max_duration"
  nest-ssl cuts windows "$(IFS=,; echo "${val_cuts[*]}")" "$data_dir/cuts/val.jsonl.gz" \
    --min-duration "$min_duration" --max-duration "$max_duration"
  stage_end 3
fi

# Stages 4-7: Shar shards, bucket bins, training, export and summary -> $run_dir
. "$nest_repo/local/stages.sh"

log "Done (stages $stage..$stop_stage)."
