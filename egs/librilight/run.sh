#!/usr/bin/env bash
# NEST self-supervised pretraining on LibriLight (unlab-600 / 6k / 60k), Kaldi/icefall style.
#
#   ./run.sh                                  # all stages; a rerun skips the stages that are up to date
#   ./run.sh --stage 6 --stop-stage 6         # (re)start training only; it resumes from the last checkpoint
#   ./run.sh --subsets small,medium --nj 32 --ngpus 8
#
# See README.md for the stages, disk and time per subset, multi-node training and resuming. The script reads top to
# bottom: options, stage 0 (the corpus), then the stages it shares with egs/mini (local/librilight_stages.sh: 1-3)
# and with every recipe (local/stages.sh: 4-7), then the evaluation (8-9).
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
launcher=torchrun                # stage 6: torchrun on each node, or srun (in a SLURM job: a task per device)
save_every_steps=1000           # stage 6: the last checkpoint every N optimizer steps (0: the config decides)
val_every_steps=2500            # stage 6: validation every N optimizer steps, across epochs (0: the config decides)
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
        6 training (torchrun or srun)  7 export (.nemo, encoder-only) and summary
        8 labelled Libri-light/LibriSpeech sets  9 downstream evaluation (both only with --stop-stage 9)
Options (default):
  --stage N ($stage)  --stop-stage N ($stop_stage)  --force true|false ($force)  --nj N ($nj)
  --corpus-dir DIR ($corpus_dir)  --musan-dir DIR ($musan_dir)  --subsets LIST ($subsets)  --download true|false ($download)
  --noise-parts LIST ($noise_parts)  --noise-window SEC ($noise_window)  --check-audio header|tail|full ($check_audio)
  --prepare-chunk-size N ($prepare_chunk_size)
  --data-dir DIR ($data_dir)  --exp-dir DIR ($exp_dir)
  --min-duration SEC ($min_duration)  --max-duration SEC ($max_duration)  --max-pause SEC ($max_pause)
  --val-speakers N ($val_speakers)  --max-val-hours H ($max_val_hours)  --seed N ($seed)
  --use-shar true|false ($use_shar)  --shard-size N ($shard_size)  --num-buckets N ($num_buckets)
  --config-path DIR ($config_path)  --config-name NAME ($config_name)  --exp-name NAME (config name)
  --ngpus N ($ngpus)  --nnodes N ($nnodes)  --node-rank N ($node_rank)  --master-addr HOST ($master_addr)
  --master-port PORT ($master_port)  --save-every-steps N ($save_every_steps)  --val-every-steps N ($val_every_steps)
  --launcher torchrun|srun ($launcher)
  --train-opts 'key=value ...' ($train_opts)
  --eval-librispeech-dir DIR ($eval_librispeech_dir)  --eval-finetuning-dir DIR ($eval_finetuning_dir)
  --eval-subsets LIST ($eval_subsets)  --eval-tasks LIST ($eval_tasks)  --eval-opts '...' ($eval_opts)"

. "$nest_repo/local/parse_options.sh"
check_choice launcher torchrun srun
check_int 0 save_every_steps val_every_steps stage stop_stage val_speakers seed ngpus node_rank
check_int 1 nj prepare_chunk_size shard_size num_buckets nnodes master_port
check_float 0 noise_window min_duration max_duration max_pause max_val_hours
IFS=, read -r -a subset_list <<< "$subsets"
recipe_cd corpus_dir musan_dir data_dir exp_dir config_path eval_librispeech_dir eval_finetuning_dir

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
    if [ "$download" = true ]; then
      log "LibriLight $s: downloading ${ll_size[$s]} (${ll_hours[$s]} h)"
      "$nest_repo/local/download_librilight.sh" "$corpus_dir" "$s"
      continue
    fi
    missing=1
    url="https://dl.fbaipublicfiles.com/librilight/data/$s.tar"
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
      "$nest_repo/local/download_musan.sh" "$(dirname "$musan_dir")"
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

# Stages 1-5 write into $data_dir: one run at a time prepares it (node 0 holds the lock; local/stages.sh drops it
# before training, so other runs can train from the same data folder meanwhile).
if [ "$node_rank" -eq 0 ] && [ "$stop_stage" -ge 1 ] && [ "$stage" -le 5 ]; then recipe_lock "$data_dir"; fi

# Stages 1-3: manifests, noise set, training windows and validation split -> $data_dir/cuts, $noise_cuts
. "$nest_repo/local/librilight_stages.sh"
# Stages 4-7: Shar shards, bucket bins, training, export and summary -> $run_dir
. "$nest_repo/local/stages.sh"

# Stages 8-9: nest-ssl evaluate (docs/evaluation.md) of the exported model, fine-tuned with CTC on each Libri-light
# subset against the same architecture randomly initialised, tested on LibriSpeech test-clean and test-other (each
# with its own dev set for selection). Results: $run_dir/eval/<subset>_<clean|other>/results.json.
eval_data=$data_dir/eval
if [ -z "$eval_librispeech_dir" ] || [ -z "$eval_finetuning_dir" ]; then
  if stage_in_range 8 || stage_in_range 9; then
    log "Stages 8-9: skipped: give --eval-librispeech-dir and --eval-finetuning-dir for the downstream evaluation"
  fi
else
  # Stage 8 writes into $data_dir too (data/eval): the data folder's lock again, for this stage only.
  if [ "$node_rank" -eq 0 ] && stage_in_range 8; then recipe_lock "$data_dir"; fi
  if stage_begin 8 "labelled evaluation sets ($eval_subsets)" opt:eval_subsets="$eval_subsets" \
      in:"$eval_librispeech_dir" in:"$eval_finetuning_dir" out:"$eval_data"; then
    python "$nest_repo/local/prepare_librispeech_eval.py" --librispeech-dir "$eval_librispeech_dir" \
      --finetuning-dir "$eval_finetuning_dir" --out-dir "$eval_data" --subsets "$eval_subsets"
    stage_end 8
  fi
  recipe_unlock
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
