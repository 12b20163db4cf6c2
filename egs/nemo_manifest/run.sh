#!/usr/bin/env bash
# NEST pretraining from NeMo manifests: for users who already have NeMo JSON-lines manifests (audio_filepath,
# duration, optional offset) for training and validation, and optionally a noise manifest.
#
#   ./run.sh --train-manifest /data/train.json --val-manifest /data/dev.json --noise-manifest /data/noise.json
#   ./run.sh --train-manifest a.json,b.json --val-manifest dev.json --ngpus 8 --use-shar true
#
# The stages are those of egs/librilight from the training windows on, with the NeMo manifests converted first.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
. "$here/../../local/common.sh"

stage=0
stop_stage=7
force=false
nj=8

train_manifest=""                # NeMo manifest(s), comma-separated (required)
val_manifest=""                  # NeMo manifest(s), comma-separated (required)
noise_manifest=""                # optional: a NeMo or lhotse noise manifest, or a folder of noise audio (MUSAN)
noise_parts=noise,music          # MUSAN parts, when --noise-manifest is a MUSAN folder
noise_window=10

data_dir=data
exp_dir=exp
min_duration=1.0                 # training windows (seconds): dropped below, split above max
max_duration=20.0
seed=0
use_shar=false
shard_size=1000
num_buckets=30

config_path=$nest_repo/recipes/nest/conf
config_name=nest_fast-conformer
exp_name=""
ngpus=1
nnodes=1
node_rank=0
master_addr=localhost
master_port=29500
train_opts=""

help_message="Usage: $0 --train-manifest LIST --val-manifest LIST [--noise-manifest M] [options]
Stages: 0 check the manifests  1 NeMo -> Lhotse cuts  2 noise set (when --noise-manifest)  3 training windows
        4 Shar shards (--use-shar true)  5 bucket bins  6 training (torchrun)  7 export (.nemo, encoder-only), summary
Options (default):
  --stage N ($stage)  --stop-stage N ($stop_stage)  --force true|false ($force)  --nj N ($nj)
  --train-manifest LIST  --val-manifest LIST  --noise-manifest M  --noise-parts LIST ($noise_parts)
  --noise-window SEC ($noise_window)  --data-dir DIR ($data_dir)  --exp-dir DIR ($exp_dir)
  --min-duration SEC ($min_duration)  --max-duration SEC ($max_duration)  --seed N ($seed)
  --use-shar true|false ($use_shar)  --shard-size N ($shard_size)  --num-buckets N ($num_buckets)
  --config-path DIR ($config_path)  --config-name NAME ($config_name)  --exp-name NAME (config name)
  --ngpus N ($ngpus)  --nnodes N ($nnodes)  --node-rank N ($node_rank)  --master-addr HOST ($master_addr)
  --master-port PORT ($master_port)  --train-opts 'key=value ...'"

. "$nest_repo/local/parse_options.sh"
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
recipe_cd "$here" data_dir exp_dir config_path

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

train_for_training=$data_dir/cuts/train.jsonl.gz
if [ "$use_shar" = true ]; then
  train_for_training=$data_dir/shar/train
  if stage_begin 4 "Shar shards of the training windows" opt:shard_size="$shard_size" opt:seed="$seed" \
      in:"$data_dir/cuts/train.jsonl.gz" out:"$train_for_training"; then
    rm -rf "$train_for_training"
    nest-ssl shar export "$data_dir/cuts/train.jsonl.gz" "$train_for_training" --shard-size "$shard_size" \
      --seed "$seed" --num-jobs "$nj"
    stage_end 4
  fi
elif stage_in_range 4; then
  log "Stage 4: skipped (--use-shar false): training reads $train_for_training"
fi

if stage_begin 5 "bucket duration bins" opt:num_buckets="$num_buckets" in:"$data_dir/cuts/train.jsonl.gz" \
    out:"$data_dir/bucket_bins.txt"; then
  nest-ssl cuts estimate-bins "$data_dir/cuts/train.jsonl.gz" --num-buckets "$num_buckets" \
    --key model.train_ds > "$data_dir/bucket_bins.txt.tmp"
  mv "$data_dir/bucket_bins.txt.tmp" "$data_dir/bucket_bins.txt"
  log "$(cat "$data_dir/bucket_bins.txt")"
  stage_end 5
fi

run_dir=$exp_dir/${exp_name:-$config_name}
done_dir=$run_dir/.done
ckpt_dir=$run_dir/checkpoints

if stage_begin 6 "training ($config_name, $nnodes node(s) x $ngpus GPU(s))" opt:config_name="$config_name" \
    opt:train_opts="$train_opts" opt:use_shar="$use_shar" in:"$config_path/$config_name.yaml" \
    in:"$train_for_training" in:"$data_dir/cuts/val.jsonl.gz" in:"$data_dir/bucket_bins.txt" \
    ${noise_cuts:+in:"$noise_cuts"} out:"$ckpt_dir"; then
  overrides=(
    "model.train_ds.manifest_filepath=$train_for_training"
    "model.validation_ds.manifest_filepath=$data_dir/cuts/val.jsonl.gz"
    "model.train_ds.noise_manifest=${noise_cuts:-null}"
    "model.validation_ds.noise_manifest=${noise_cuts:-null}"
    "++model.train_ds.use_bucketing=true"
    "++$(cat "$data_dir/bucket_bins.txt")"
    "++model.train_ds.seed=$seed"
    "exp_manager.exp_dir=$exp_dir"
    "exp_manager.name=${exp_name:-$config_name}"
    "trainer.num_nodes=$nnodes"
  )
  if [ "$ngpus" -eq 0 ]; then
    overrides+=("trainer.accelerator=cpu" "trainer.devices=1" "trainer.strategy=auto")
    nproc=1
  else
    overrides+=("trainer.accelerator=gpu" "trainer.devices=$ngpus")
    nproc=$ngpus
  fi
  if [ "$nnodes" -eq 1 ]; then
    launcher=(--standalone --nnodes 1 --nproc_per_node "$nproc")
  else
    launcher=(--nnodes "$nnodes" --node_rank "$node_rank" --master_addr "$master_addr" --master_port "$master_port"
      --nproc_per_node "$nproc")
  fi
  # exp_manager.resume_if_exists (true in the configs): a rerun continues from the last checkpoint.
  # shellcheck disable=SC2086
  python -m torch.distributed.run "${launcher[@]}" "$nest_repo/recipes/nest/train.py" \
    --config-path "$config_path" --config-name "$config_name" "${overrides[@]}" $train_opts
  stage_end 6
fi

if [ "$node_rank" -ne 0 ]; then
  stage_in_range 7 && log "Stage 7: skipped on node $node_rank (node 0 exports)"
elif stage_begin 7 "export and summary" in:"$ckpt_dir" out:"$run_dir/export/model.nemo" \
    out:"$run_dir/export/encoder.ckpt" out:"$run_dir/summary.txt"; then
  ckpt=$(python "$nest_repo/local/summary.py" last-checkpoint "$run_dir")
  mkdir -p "$run_dir/export"
  nest-ssl export "$ckpt" --to nemo "$run_dir/export/model.nemo"
  # encoder-only: the encoder weights as a Lightning-style .ckpt, for NeMo's init_from_ptl_ckpt downstream
  nest-ssl export "$ckpt" --to nemo "$run_dir/export/encoder.ckpt" --encoder-only
  nest-ssl plot "$run_dir"  # writes $run_dir/curves.png
  python "$nest_repo/local/summary.py" summary "$run_dir" --train-cuts "$data_dir/cuts/train.jsonl.gz" \
    --val-cuts "$data_dir/cuts/val.jsonl.gz" --checkpoint "$ckpt" > "$run_dir/summary.txt.tmp"
  mv "$run_dir/summary.txt.tmp" "$run_dir/summary.txt"
  cat "$run_dir/summary.txt"
  stage_end 7
fi

log "Done (stages $stage..$stop_stage)."
