#!/usr/bin/env bash
# NEST self-supervised pretraining on LibriLight (unlab-600 / 6k / 60k), Kaldi/icefall style.
#
#   ./run.sh                                  # all stages; a rerun skips the stages that are up to date
#   ./run.sh --stage 6 --stop-stage 6         # (re)start training only; it resumes from the last checkpoint
#   ./run.sh --subsets small,medium --nj 32 --ngpus 8
#
# See README.md for the stages, disk and time per subset, multi-node training and resuming.
set -euo pipefail
. "$(dirname "$0")/../../local/common.sh"   # log, die, stage_begin/stage_end, recipe_cd, nest-ssl, $nest_repo

stage=0
stop_stage=7
force=false                # true: rerun every stage in [stage, stop_stage] even when up to date
nj=8                       # parallel jobs for data preparation

corpus_dir=download/librilight   # holds small/ medium/ large/ (as extracted from the LibriLight tar files)
musan_dir=download/musan         # MUSAN, any folder of noise audio or a noise manifest; "" for speech-only mixing
subsets=small                    # comma-separated: small (577 h), medium (5,193 h), large (51,934 h)
download=false                   # true: stage 0 downloads what is missing (nothing is downloaded otherwise)
noise_parts=noise,music          # MUSAN parts for the noise set (its speech part is LibriVox, like LibriLight)
noise_window=10                  # noise windows are at most this long (seconds)
check_audio=tail                 # stage 1: header|tail|full (tail also decodes each file's last samples)
prepare_chunk_size=64            # stage 1: files per unit of work, and of resumption after a kill
skip_data_prep=false             # true: skip stages 0-3; another recipe (egs/nemo_manifest) made data/cuts, data/noise

data_dir=data
exp_dir=exp
min_duration=1.0                 # training windows (seconds): dropped below ...
max_duration=20.0                # ... and split above (VAD segments merged across pauses < max_pause)
max_pause=1.0
val_speakers=10                  # speakers held out for validation
max_val_hours=2.0                # validation windows beyond this are dropped (from held-out speakers only)
seed=0

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
train_opts=""                    # extra config overrides for train.py, e.g. "trainer.max_steps=100000 model.train_ds.batch_size=16"

# Stages 8-9 (run only when asked: --stop-stage 9): downstream evaluation on Libri-light's limited-resource ASR sets.
eval_librispeech_dir=""          # LibriSpeech with dev-clean, dev-other, test-clean, test-other ("": stages 8-9 skipped)
eval_finetuning_dir=""           # Libri-light's librispeech_finetuning (1h/, 9h/)
eval_subsets=10min,1h,10h        # fine-tuning subsets (10min = 1h/0, 1h = 1h/*, 10h = 1h/* + 9h)
eval_tasks=finetune              # nest-ssl evaluate --tasks (asr adds the frozen CTC probe: memory, see README.md)
eval_opts=""                     # more nest-ssl evaluate options, e.g. "--finetune-steps 20000 --device cuda"

help_message="Usage: $0 [options]
Stages: 0 corpus check (and download with --download true)  1 LibriLight manifests  2 noise set
        3 training windows + validation split by speaker  4 Shar shards (--use-shar true)  5 bucket bins
        6 training (torchrun)  7 export (.nemo, encoder-only) and summary
        8 labelled Libri-light/LibriSpeech sets  9 downstream evaluation (both only with --stop-stage 9)
Options (default):
  --stage N ($stage)  --stop-stage N ($stop_stage)  --force true|false ($force)  --nj N ($nj)
  --corpus-dir DIR ($corpus_dir)  --musan-dir DIR ($musan_dir)  --subsets LIST ($subsets)  --download true|false ($download)
  --noise-parts LIST ($noise_parts)  --noise-window SEC ($noise_window)  --check-audio header|tail|full ($check_audio)
  --prepare-chunk-size N ($prepare_chunk_size)  --skip-data-prep true|false ($skip_data_prep)
  --data-dir DIR ($data_dir)  --exp-dir DIR ($exp_dir)
  --min-duration SEC ($min_duration)  --max-duration SEC ($max_duration)  --max-pause SEC ($max_pause)
  --val-speakers N ($val_speakers)  --max-val-hours H ($max_val_hours)  --seed N ($seed)
  --use-shar true|false ($use_shar)  --shard-size N ($shard_size)  --num-buckets N ($num_buckets)
  --config-path DIR ($config_path)  --config-name NAME ($config_name)  --exp-name NAME (config name)
  --ngpus N ($ngpus)  --nnodes N ($nnodes)  --node-rank N ($node_rank)  --master-addr HOST ($master_addr)
  --master-port PORT ($master_port)  --train-opts 'key=value ...' ($train_opts)
  --eval-librispeech-dir DIR ($eval_librispeech_dir)  --eval-finetuning-dir DIR ($eval_finetuning_dir)
  --eval-subsets LIST ($eval_subsets)  --eval-tasks LIST ($eval_tasks)  --eval-opts '...' ($eval_opts)"

. "$nest_repo/local/parse_options.sh"
recipe_cd corpus_dir musan_dir data_dir exp_dir config_path eval_librispeech_dir eval_finetuning_dir

manifests=$data_dir/manifests
done_dir=$data_dir/.done
IFS=, read -r -a subset_list <<< "$subsets"
cut_manifests=()   # stage 1 -> stage 3
stage1_io=()       # in:/out: arguments of stage 1's guard
for s in "${subset_list[@]}"; do
  cut_manifests+=("$manifests/librilight_cuts_$s.jsonl.gz")
  stage1_io+=("in:$corpus_dir/$s")
  for kind in recordings supervisions cuts; do
    stage1_io+=("out:$manifests/librilight_${kind}_$s.jsonl.gz")
  done
done
noise_cuts=""
[ -n "$musan_dir" ] && noise_cuts=$data_dir/noise/noise_cuts.jsonl.gz

# Stages 0-3 make the training data: $data_dir/cuts/{train,val}.jsonl.gz and the noise set $noise_cuts.
# A recipe that makes them its own way (egs/nemo_manifest) runs stages 4-7 of this one with --skip-data-prep true.
if [ "$skip_data_prep" = true ]; then
  [ "$stage" -gt 3 ] ||
    log "Stages 0-3: skipped (--skip-data-prep true); training reads $data_dir/cuts and ${noise_cuts:-no noise set}"
else
  if stage_in_range 0; then
    log "Stage 0: check the corpus layout in $corpus_dir (subsets: $subsets) and the noise folder $musan_dir"
    # Sizes from the Libri-Light README; the tar files hold FLAC, so extracted sizes are about the same.
    declare -A ll_hours=([small]=577 [medium]=5193 [large]=51934)
    declare -A ll_size=([small]="35 GB" [medium]="321 GB" [large]="3.05 TB")
    missing=0
    for s in "${subset_list[@]}"; do
      [ -n "${ll_hours[$s]:-}" ] || die "unknown subset '$s' (choose from small, medium, large)"
      # The layout is <subset>/<speaker>/<book>/<file>.flac with <file>.json beside it; look at one file.
      # A tar file still there means an interrupted download or extraction (it is deleted once extracted).
      first=$(find "$corpus_dir/$s" -mindepth 3 -maxdepth 3 -name '*.flac' -print -quit 2>/dev/null || true)
      if [ -n "$first" ] && [ -f "${first%.flac}.json" ] && [ ! -e "$corpus_dir/$s.tar" ]; then
        log "LibriLight $s: found (e.g. $first)"
        continue
      fi
      url="https://dl.fbaipublicfiles.com/librilight/data/$s.tar"
      if [ "$download" = true ]; then
        mkdir -p "$corpus_dir"
        log "Downloading LibriLight $s (${ll_size[$s]}, ${ll_hours[$s]} h) into $corpus_dir (resumable: wget -c)"
        wget -c -P "$corpus_dir" "$url"
        tar -xf "$corpus_dir/$s.tar" -C "$corpus_dir"
        rm "$corpus_dir/$s.tar"
        continue
      fi
      missing=1
      log "LibriLight $s is missing or not in the expected layout: $corpus_dir/$s/<speaker>/<book>/<file>.flac + .json"
      log "  download ${ll_size[$s]} (${ll_hours[$s]} h of audio) from $url"
      log "  extracted it takes about ${ll_size[$s]} too, twice that while the tar is kept ('wget -qO- $url | tar -x -C"
      log "  $corpus_dir' extracts while downloading); then: tar -xf $s.tar -C $corpus_dir && rm $s.tar"
      log "  (or rerun with --download true, which resumes an interrupted download; or --corpus-dir an existing copy)"
    done
    if [ -n "$musan_dir" ]; then
      if [ -n "$(find "$musan_dir" \( -name '*.wav' -o -name '*.flac' \) -print -quit 2>/dev/null || true)" ]; then
        log "Noise: found audio in $musan_dir"
      elif [ "$download" = true ]; then
        log "Downloading MUSAN (11 GB, 109 h) into $(dirname "$musan_dir")"
        mkdir -p "$(dirname "$musan_dir")"
        python -c 'import sys; from lhotse.recipes.musan import download_musan; download_musan(sys.argv[1])' \
          "$(dirname "$musan_dir")"
        [ -d "$musan_dir" ] || die "MUSAN was extracted to $(dirname "$musan_dir")/musan; pass --musan-dir to it"
      else
        missing=1
        log "Noise folder $musan_dir has no audio. MUSAN: https://www.openslr.org/resources/17/musan.tar.gz"
        log "  (11 GB download, about 11 GB extracted, 109 h: music 42 h, speech 60 h, noise 6 h); extract so that"
        log "  $musan_dir/{music,noise,speech} exist, or rerun with --download true, or point --musan-dir at any"
        log "  folder of noise audio, or --musan-dir '' to train without a noise set (speech-only mixing)."
      fi
    fi
    [ $missing -eq 0 ] || die "Stage 0: data missing (see above); nothing was downloaded (use --download true)"
  fi

  if stage_begin 1 "LibriLight manifests ($subsets)" opt:subsets="$subsets" opt:check_audio="$check_audio" \
      "${stage1_io[@]}"; then
    # Streams the corpus in --nj processes; a killed run resumes from its finished chunks, and every bad file is
    # listed with the reason in $manifests/rejects_<subset>.tsv instead of stopping the run.
    nest-ssl prepare librilight "$corpus_dir" "$manifests" --subsets "$subsets" --num-jobs "$nj" \
      --check-audio "$check_audio" --chunk-size "$prepare_chunk_size"
    stage_end 1
  fi

  if [ -z "$musan_dir" ]; then
    stage_in_range 2 && log "Stage 2: no noise folder (--musan-dir ''): training mixes speech only"
  elif stage_begin 2 "noise set from $musan_dir" opt:noise_parts="$noise_parts" opt:noise_window="$noise_window" \
      in:"$musan_dir" out:"$noise_cuts"; then
    nest-ssl prepare noise "$musan_dir" "$data_dir/noise" --parts "$noise_parts" --window "$noise_window"
    stage_end 2
  fi

  if stage_begin 3 "training windows and a validation split by speaker" opt:min_duration="$min_duration" \
      opt:max_duration="$max_duration" opt:max_pause="$max_pause" opt:val_speakers="$val_speakers" \
      opt:max_val_hours="$max_val_hours" opt:seed="$seed" "${cut_manifests[@]/#/in:}" \
      out:"$data_dir/cuts/train.jsonl.gz" out:"$data_dir/cuts/val.jsonl.gz"; then
    # VAD segments are merged across short pauses and long spans split, into windows of min..max duration.
    mkdir -p "$data_dir/cuts"
    nest-ssl cuts windows "$(IFS=,; echo "${cut_manifests[*]}")" "$data_dir/cuts/windows.jsonl.gz" \
      --min-duration "$min_duration" --max-duration "$max_duration" --max-pause "$max_pause"
    python "$nest_repo/local/split_by_speaker.py" "$data_dir/cuts/windows.jsonl.gz" \
      "$data_dir/cuts/train.jsonl.gz" "$data_dir/cuts/val.jsonl.gz" \
      --val-speakers "$val_speakers" --max-val-hours "$max_val_hours" --seed "$seed"
    rm "$data_dir/cuts/windows.jsonl.gz"
    stage_end 3
  fi
fi

train_manifest=$data_dir/cuts/train.jsonl.gz
if [ "$use_shar" = true ]; then
  train_manifest=$data_dir/shar/train
  if stage_begin 4 "Shar shards of the training windows" opt:shard_size="$shard_size" opt:seed="$seed" \
      in:"$data_dir/cuts/train.jsonl.gz" out:"$train_manifest"; then
    # A global shuffle first: each shard is then a random sample, so reading shards in random order is enough.
    rm -rf "$train_manifest"
    nest-ssl shar export "$data_dir/cuts/train.jsonl.gz" "$train_manifest" --shard-size "$shard_size" \
      --seed "$seed" --num-jobs "$nj"
    stage_end 4
  fi
elif stage_in_range 4; then
  log "Stage 4: skipped (--use-shar false): training reads $train_manifest"
fi

if stage_begin 5 "bucket duration bins" opt:num_buckets="$num_buckets" in:"$data_dir/cuts/train.jsonl.gz" \
    out:"$data_dir/bucket_bins.txt"; then
  nest-ssl cuts estimate-bins "$data_dir/cuts/train.jsonl.gz" --num-buckets "$num_buckets" \
    --key model.train_ds > "$data_dir/bucket_bins.txt.tmp"
  mv "$data_dir/bucket_bins.txt.tmp" "$data_dir/bucket_bins.txt"
  log "$(cat "$data_dir/bucket_bins.txt")"
  stage_end 5
fi

# Stages 6-7 write into the run folder (NeMo's exp_manager layout: <exp_dir>/<name>/checkpoints, TensorBoard
# events, metrics.jsonl) and keep their markers there, so several runs can share one data directory.
run_dir=$exp_dir/${exp_name:-$config_name}
done_dir=$run_dir/.done
ckpt_dir=$run_dir/checkpoints

# Every node runs stage 6 (one torchrun each, static rendezvous at --master-addr:--master-port); the nodes share
# the run folder, so only node 0 writes the stage marker (the others read it to take the same decision) and only
# global rank 0 writes checkpoints, metrics and TensorBoard events. A node that dies stops the others (gloo/NCCL
# error, or a training process whose torchrun is gone exits itself); rerunning stage 6 on every node continues
# from the last checkpoint.
[ "$node_rank" -ne 0 ] && stage_marker_readonly=true
if stage_begin 6 "training ($config_name, $nnodes node(s) x $ngpus GPU(s))" opt:config_name="$config_name" \
    opt:train_opts="$train_opts" opt:use_shar="$use_shar" in:"$config_path/$config_name.yaml" \
    in:"$train_manifest" in:"$data_dir/cuts/val.jsonl.gz" in:"$data_dir/bucket_bins.txt" \
    ${noise_cuts:+in:"$noise_cuts"} out:"$ckpt_dir"; then
  overrides=(
    "model.train_ds.manifest_filepath=$train_manifest"
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
stage_marker_readonly=false

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

# Stages 8-9: nest-ssl evaluate (docs/evaluation.md) of the exported model, fine-tuned with CTC on each Libri-light
# subset against the same architecture randomly initialised, tested on LibriSpeech test-clean and test-other (each
# with its own dev set for selection). Results: $run_dir/eval/<subset>_<clean|other>/results.json.
eval_data=$data_dir/eval
if [ -z "$eval_librispeech_dir" ] || [ -z "$eval_finetuning_dir" ]; then
  if stage_in_range 8 || stage_in_range 9; then
    log "Stages 8-9: skipped: give --eval-librispeech-dir and --eval-finetuning-dir for the downstream evaluation"
  fi
else
  if stage_begin 8 "labelled evaluation sets ($eval_subsets)" opt:eval_subsets="$eval_subsets" \
      in:"$eval_librispeech_dir" in:"$eval_finetuning_dir" out:"$eval_data"; then
    python "$nest_repo/local/prepare_librispeech_eval.py" --librispeech-dir "$eval_librispeech_dir" \
      --finetuning-dir "$eval_finetuning_dir" --out-dir "$eval_data" --subsets "$eval_subsets"
    stage_end 8
  fi
  if stage_in_range 9 && [ ! -f "$run_dir/export/model.nemo" ]; then
    die "Stage 9: $run_dir/export/model.nemo is missing; run stage 7 (export) first"
  fi
  if [ "$node_rank" -ne 0 ]; then
    stage_in_range 9 && log "Stage 9: skipped on node $node_rank (node 0 evaluates)"
  elif stage_begin 9 "downstream evaluation ($eval_tasks on $eval_subsets)" opt:eval_subsets="$eval_subsets" \
      opt:eval_tasks="$eval_tasks" opt:eval_opts="$eval_opts" in:"$run_dir/export/model.nemo" in:"$eval_data" \
      out:"$run_dir/eval"; then
    IFS=, read -r -a eval_subset_list <<< "$eval_subsets"
    for s in "${eval_subset_list[@]}"; do
      for cond in clean other; do
        # shellcheck disable=SC2086
        nest-ssl evaluate --model "$run_dir/export/model.nemo" --train-cuts "$eval_data/train_${s}_cuts.jsonl.gz" \
          --dev-cuts "$eval_data/dev_${cond}_cuts.jsonl.gz" --test-cuts "$eval_data/test_${cond}_cuts.jsonl.gz" \
          --tasks "$eval_tasks" --out-dir "$run_dir/eval/${s}_${cond}" $eval_opts
      done
    done
    stage_end 9
  fi
fi

log "Done (stages $stage..$stop_stage)."
