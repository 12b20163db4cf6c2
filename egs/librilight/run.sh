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

# Stages 10-14 (run only when asked: --stop-stage 10 or more, with both --eval-*-dir): CTC fine-tuning of the exported
# model on Libri-light's splits and decoding of LibriSpeech dev/test (README.md, "Fine-tuning and decoding").
ft_splits=10min,1h,10h           # any of 10min (1h/0), 1h (1h/*), 10h (1h/* + 9h), 100h (LibriSpeech train-clean-100)
tokenizer_type=bpe               # stage 11: bpe|unigram|char, trained per split on that split's transcripts
vocab_size=256                   # stage 11: SentencePiece vocabulary size
ft_init_from=""                  # stage 13: the pretrained model ("": <exp-dir>/<exp-name>/export/model.nemo)
ft_steps=auto                    # stage 13: N for every split, or auto: fairseq's wav2vec 2.0 BASE schedules
                                 #   (updates: 10min 13000, 1h 13000, 10h 20000, 100h 80000)
ft_lr=1e-4                       # stage 13: nest-ssl finetune --lr (AdamW, constant; not tuned here)
ft_batch_size=8                  # stage 13: utterances per step
ft_save_every=1000               # stage 13: a checkpoint (and dev WER) every N steps; all kept for --avg
ft_dev=dev_other                 # stage 13: the dev set scored at each checkpoint: dev_other (as fairseq),
                                 #   dev_clean, none
ft_opts=""                       # stage 13: more nest-ssl finetune options (they come last, so they win)
lm_arpa=""                       # stage 14: an ARPA LM (.arpa or .arpa.gz), e.g. openslr 11's
                                 #   3-gram.pruned.1e-7.arpa.gz
lm_text=""                       # stage 12: or a text file to estimate our own Kneser-Ney LM from (its head, below)
lm_max_sentences=200000          # stage 12: the first N sentences of --lm-text (0: all; counts are held in memory)
lm_order=3                       # stage 12: 1, 2 or 3
avg=5                            # stage 14: decode the average of the last N checkpoints (icefall's --avg)
decode_opts=""                   # stage 14: more nest-ssl decode options,
                                 #   e.g. "--lm-weight 1.5 --word-score 0 --beam-size 100"

help_message="Usage: $0 [options]
Stages: 0 corpus check (and download with --download true)  1 LibriLight manifests  2 noise set
        3 training windows + validation split by speaker  4 Shar shards (--use-shar true)  5 bucket bins
        6 training (torchrun or srun)  7 export (.nemo, encoder-only) and summary
        8 labelled Libri-light/LibriSpeech sets  9 downstream evaluation (both only with --stop-stage 9)
        10 ASR manifests  11 tokenizers  12 n-gram LM (--lm-text)  13 fine-tuning per split  14 decoding
        (10-14 only with --stop-stage 10 or more)
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
  --eval-subsets LIST ($eval_subsets)  --eval-tasks LIST ($eval_tasks)  --eval-opts '...' ($eval_opts)
  --ft-splits LIST ($ft_splits)  --tokenizer-type bpe|unigram|char ($tokenizer_type)  --vocab-size N ($vocab_size)
  --ft-init-from MODEL (export/model.nemo)  --ft-steps N|auto ($ft_steps)  --ft-lr LR ($ft_lr)
  --ft-batch-size N ($ft_batch_size)  --ft-save-every N ($ft_save_every)  --ft-dev dev_other|dev_clean|none ($ft_dev)
  --ft-opts '...' ($ft_opts)  --lm-arpa FILE ($lm_arpa)  --lm-text FILE ($lm_text)
  --lm-max-sentences N ($lm_max_sentences)  --lm-order 1|2|3 ($lm_order)  --avg N ($avg)
  --decode-opts '...' ($decode_opts)"

. "$nest_repo/local/parse_options.sh"
check_choice launcher torchrun srun
check_int 0 save_every_steps val_every_steps stage stop_stage val_speakers seed ngpus node_rank
check_int 1 nj prepare_chunk_size shard_size num_buckets nnodes master_port
check_float 0 noise_window min_duration max_duration max_pause max_val_hours
check_int 1 vocab_size ft_batch_size ft_save_every avg
check_int 0 lm_max_sentences
check_float 0 ft_lr
check_choice tokenizer_type bpe unigram char
check_choice lm_order 1 2 3
check_choice ft_dev dev_other dev_clean none
[ "$ft_steps" = auto ] || check_int 1 ft_steps
IFS=, read -r -a subset_list <<< "$subsets"
IFS=, read -r -a ft_split_list <<< "$ft_splits"
for s in "${ft_split_list[@]}"; do
  case $s in
    10min | 1h | 10h | 100h) ;;
    *) printf '%s: option --ft-splits: unknown split '"'"'%s'"'"' (choose from 10min, 1h, 10h, 100h)\n' "$0" "$s" >&2
      exit 2 ;;
  esac
done
if [ ${#ft_split_list[@]} -eq 0 ]; then
  echo "$0: option --ft-splits: give at least one of 10min, 1h, 10h, 100h" >&2
  exit 2
fi
recipe_cd corpus_dir musan_dir data_dir exp_dir config_path eval_librispeech_dir eval_finetuning_dir ft_init_from \
  lm_arpa lm_text
if [ -n "$lm_arpa" ] && [ -n "$lm_text" ]; then
  echo "$0: options --lm-arpa and --lm-text: give one of them (an ARPA file, or a text to estimate one from)" >&2
  exit 2
fi
for v in lm_arpa lm_text ft_init_from; do
  if [ -n "${!v}" ] && [ ! -f "${!v}" ]; then
    printf '%s: option --%s: %s does not exist (see README.md, "Fine-tuning and decoding")\n' "$0" "${v//_/-}" \
      "${!v}" >&2
    exit 2
  fi
done

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

# Stages 10-14: the exported encoder fine-tuned with CTC on each of --ft-splits and decoded on LibriSpeech's dev and
# test sets, greedy and with an n-gram LM (README.md, "Fine-tuning and decoding"). Node 0 only.
asr_data=$data_dir/asr
manifests=$asr_data/manifests
lang_dir=$asr_data/lang_${tokenizer_type}_${vocab_size}
[ "$tokenizer_type" != char ] || lang_dir=$asr_data/lang_char
ft_root=$run_dir/finetune
ft_init=${ft_init_from:-$run_dir/export/model.nemo}
lm_file=$lm_arpa
[ -z "$lm_text" ] || lm_file=$asr_data/lm/lm_${lm_order}gram_head${lm_max_sentences}.arpa
ft_steps_for() {  # the steps of split $1: --ft-steps, or fairseq's wav2vec 2.0 BASE schedule for that split
  if [ "$ft_steps" != auto ]; then echo "$ft_steps"; return; fi
  case $1 in
    10min | 1h) echo 13000 ;;
    10h) echo 20000 ;;
    100h) echo 80000 ;;
  esac
}
if [ "$stop_stage" -lt 10 ] || [ "$stage" -gt 14 ]; then
  :
elif [ -z "$eval_librispeech_dir" ] || [ -z "$eval_finetuning_dir" ]; then
  log "Stages 10-14: skipped: give --eval-librispeech-dir and --eval-finetuning-dir for fine-tuning and decoding"
elif [ "$node_rank" -ne 0 ]; then
  log "Stages 10-14: skipped on node $node_rank (node 0 fine-tunes and decodes)"
else
  # Stages 10-12 write into $data_dir/asr: the data folder's lock and markers.
  done_dir=$data_dir/.done
  if stage_in_range 10 || stage_in_range 11 || stage_in_range 12; then recipe_lock "$data_dir"; fi
  if stage_begin 10 "ASR manifests (NeMo JSON lines, upper case) for $ft_splits and LibriSpeech dev/test" \
      opt:ft_splits="$ft_splits" in:"$eval_librispeech_dir" in:"$eval_finetuning_dir" out:"$manifests"; then
    python "$nest_repo/local/prepare_librispeech_eval.py" --librispeech-dir "$eval_librispeech_dir" \
      --finetuning-dir "$eval_finetuning_dir" --out-dir "$manifests" --subsets "$ft_splits" --format nemo \
      --case upper --nj "$nj"
    stage_end 10
  fi
  tok_args=() tok_ins=() tok_outs=()
  for s in "${ft_split_list[@]}"; do
    tok_args+=(--out "$lang_dir/$s=$manifests/train_$s.json")
    tok_ins+=(in:"$manifests/train_$s.json")
    tok_outs+=(out:"$lang_dir/$s")
  done
  if stage_begin 11 "$tokenizer_type tokenizers ($vocab_size) from each split's transcripts" \
      opt:ft_splits="$ft_splits" opt:tokenizer_type="$tokenizer_type" opt:vocab_size="$vocab_size" \
      "${tok_ins[@]}" "${tok_outs[@]}"; then
    # LibriSpeech's 27 characters always in the vocabulary: a 10-minute split may miss a letter that a test
    # transcript or an LM word has.
    python "$nest_repo/local/train_asr_tokenizer.py" --type "$tokenizer_type" --vocab-size "$vocab_size" \
      --alphabet "ABCDEFGHIJKLMNOPQRSTUVWXYZ'" "${tok_args[@]}"
    stage_end 11
  fi
  if [ -n "$lm_text" ]; then
    if stage_begin 12 "$lm_order-gram LM from the first $lm_max_sentences sentences of $lm_text" \
        opt:lm_order="$lm_order" opt:lm_max_sentences="$lm_max_sentences" in:"$lm_text" out:"$lm_file"; then
      python "$nest_repo/local/build_ngram_lm.py" --text "$lm_text" --max-sentences "$lm_max_sentences" \
        --order "$lm_order" --case upper --out "$lm_file"
      stage_end 12
    fi
  elif stage_in_range 12; then
    if [ -n "$lm_arpa" ]; then
      log "Stage 12: the LM is --lm-arpa $lm_arpa (nothing to build)"
    else
      log "Stage 12: no LM (--lm-arpa FILE or --lm-text FILE): stage 14 decodes greedy only"
    fi
  fi
  recipe_unlock

  done_dir=$run_dir/.done
  if stage_in_range 13 && [ ! -f "$ft_init" ]; then
    die "Stage 13: $ft_init is missing; run stage 7 (export) first, or give --ft-init-from"
  fi
  for s in "${ft_split_list[@]}"; do
    ft_out=$ft_root/$s
    steps=$(ft_steps_for "$s")
    dev_args=() dev_in=()
    if [ "$ft_dev" != none ]; then
      dev_args=(--dev-manifest "$manifests/$ft_dev.json")
      dev_in=(in:"$manifests/$ft_dev.json")
    fi
    if stage_begin "13_$s" "fine-tune on $s ($steps steps) from $ft_init" opt:steps="$steps" opt:lr="$ft_lr" \
        opt:batch_size="$ft_batch_size" opt:save_every="$ft_save_every" opt:ft_dev="$ft_dev" \
        opt:ft_opts="$ft_opts" \
        in:"$ft_init" in:"$manifests/train_$s.json" "${dev_in[@]}" in:"$lang_dir/$s" \
        out:"$ft_out/log.tsv" out:"$ft_out/tokenizer"; then
      # A rerun on the same folder resumes from its last checkpoint (nest-ssl finetune); for a fresh run delete
      # $ft_out or use another --exp-name.
      # shellcheck disable=SC2086
      nest-ssl finetune --train-manifest "$manifests/train_$s.json" "${dev_args[@]}" --out-dir "$ft_out" \
        --init-from "$ft_init" --tokenizer "$lang_dir/$s" --tokenizer-type "$tokenizer_type" --steps "$steps" \
        --lr "$ft_lr" --batch-size "$ft_batch_size" --save-every "$ft_save_every" $ft_opts
      stage_end "13_$s"
    fi
  done
  lm_in=()
  [ -z "$lm_file" ] || lm_in=(in:"$lm_file")
  for s in "${ft_split_list[@]}"; do
    ft_out=$ft_root/$s
    if stage_in_range 14 && [ ! -f "$ft_out/log.tsv" ]; then
      die "Stage 14: $ft_out holds no fine-tuned model; run stage 13 first"
    fi
    if stage_begin "14_$s" "decode $s: dev/test clean/other, greedy${lm_file:+ and with the LM $lm_file}" \
        opt:avg="$avg" opt:lm="$lm_file" opt:decode_opts="$decode_opts" in:"$ft_out/log.tsv" "${lm_in[@]}" \
        in:"$manifests/dev_clean.json" in:"$manifests/dev_other.json" in:"$manifests/test_clean.json" \
        in:"$manifests/test_other.json" out:"$ft_out/decode"; then
      rm -rf "$ft_out/decode"
      # shellcheck disable=SC2086
      nest-ssl decode --model "$ft_out" --avg "$avg" --test dev-clean="$manifests/dev_clean.json" \
        --test dev-other="$manifests/dev_other.json" --test test-clean="$manifests/test_clean.json" \
        --test test-other="$manifests/test_other.json" --out-dir "$ft_out/decode" ${lm_file:+--lm "$lm_file"} \
        $decode_opts
      stage_end "14_$s"
    fi
  done
  if stage_in_range 14; then  # one table of what is decoded so far: split, set, method, WER, CER (%)
    printf 'split\tset\tmethod\tWER\tCER\n' > "$ft_root/.wer.tsv.tmp"
    for s in "${ft_split_list[@]}"; do
      for f in "$ft_root/$s"/decode/wer-summary-*.txt; do
        [ -f "$f" ] || continue
        name=${f##*/wer-summary-}
        name=${name%.txt}
        tail -n +2 "$f" | awk -F'\t' -v s="$s" -v set="${name%-*}" -v m="${name##*-}" \
          '{ printf "%s\t%s\t%s\t%s\t%s\n", s, set, m, $2, $3 }' >> "$ft_root/.wer.tsv.tmp"
      done
    done
    mv "$ft_root/.wer.tsv.tmp" "$ft_root/wer.tsv"
    log "WER (%) per split, test set and decoding: $ft_root/wer.tsv"
    column -t -s $'\t' "$ft_root/wer.tsv" >&2 2>/dev/null || cat "$ft_root/wer.tsv" >&2
  fi
fi

log "Done (stages $stage..$stop_stage)."
