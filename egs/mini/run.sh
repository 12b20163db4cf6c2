#!/usr/bin/env bash
# The embedded default: NEST end to end with no download, on a CPU, in a few minutes.
#
# Stage 0 generates data/corpus, a small corpus in LibriLight's layout (English speech synthesised offline by
# espeak-ng, many speakers, with LibriLight's VAD JSON beside each file), data/labelled, a labelled evaluation set
# (lhotse CutSets with text, speaker and word/phone alignments, from other speakers and other sentences), and
# data/musan, a noise set in MUSAN's layout. Then egs/librilight's stages run on them with the tiny config
# (local/librilight_stages.sh: manifests, noise windows, training windows and a speaker-held-out validation split;
# local/stages.sh: bucket bins, training, export, and the summary with the loss plot), and stage 8 evaluates.
#
#   ./run.sh                                  # everything (`make demo` from the repository root does this)
#   ./run.sh --stage 6                        # train again: resumes from the last checkpoint
#   ./run.sh --train-opts "trainer.max_steps=200"   # overrides after the demo's own (below), so they win
set -euo pipefail
. "$(dirname "$0")/../../local/common.sh"   # log, die, stage_begin/stage_end, recipe_cd, nest-ssl, $nest_repo

stage=0
stop_stage=13
force=false
nj=2
data_dir=data
exp_dir=exp
# The generated corpus: speakers x books x files of min..max seconds (the defaults give 288 files, ~2 h).
speakers=48
books=2
files=3
min_seconds=20
max_seconds=30
corpus_seed=0
eval_speakers=8           # the labelled set: speakers that pretraining never hears ...
eval_utterances=40        # ... and this many sentences each (that pretraining never has)
noise_files=6
# Stages 1-3 (egs/librilight's, on the generated corpus): 10 s windows, two speakers held out for validation.
noise_parts=noise,music
noise_window=10
check_audio=tail
prepare_chunk_size=64
min_duration=1.0
max_duration=10
max_pause=1.0
val_speakers=2
max_val_hours=2.0
seed=0
# Stages 4-7: no Shar, 4 buckets, the tiny config on the CPU.
use_shar=false
shard_size=1000
num_buckets=4
config_path=$nest_repo/nest_ssl/conf
config_name=nest_tiny
exp_name=nest_tiny
ngpus=0
nnodes=1
node_rank=0
master_addr=localhost
master_port=29500
launcher=torchrun                # stage 6: torchrun on each node, or srun (in a SLURM job: a task per device)
# Training: a checkpoint and a validation every 250 optimizer steps, counted over the run (an epoch here is shorter
# than that); stage 6 gets these overrides (NeMo's keys; README.md says why these values), then --train-opts, which
# win (e.g. --train-opts "trainer.max_steps=5000" for the longer setting). A training run that learns within the
# demo's budget (docs/learning.md): 160 ms mask blocks instead of NEST's 400 ms, which a 2-layer model on an hour of
# speech cannot bridge; NEST's augmentation off, which holds a model this small at the floor; gradient clipping.
save_every_steps=250
val_every_steps=250
mini_train_opts="trainer.max_steps=1000"
mini_train_opts+=" model.train_ds.batch_size=8 model.masking.block_size=16 model.masking.mask_prob=0.025"
mini_train_opts+=" model.train_ds.batch_augmentor.prob=0.0 model.validation_ds.batch_augmentor.prob=0.0"
mini_train_opts+=" trainer.gradient_clip_val=1.0 ++nest_trainer.health.floor_patience_steps=500"
train_opts=""
# Stage 8: options of nest-ssl evaluate (see nest-ssl evaluate --help). The frozen probes only: its fine-tuning task
# (character CTC, 100 steps) is what stages 9-13 do at length; --eval-opts "--threads 2" runs it too.
eval_opts="--threads 2 --tasks phone,speaker,asr"
# Stages 9-13: ASR fine-tuning (docs/asr.md). Stage 9's labelled sets: nested training budgets read by
# --asr-train-speakers speakers, dev and test sets of other speakers (none of them pretrained on), an LM text.
asr_train_speakers=24
asr_dev_speakers=4
asr_test_speakers=8
asr_budgets="10min=600,1h=3600"   # NAME=SECONDS of speech, nested
asr_dev_utterances=20             # per dev speaker
asr_test_utterances=25            # per test speaker
lm_sentences=5000
# The grid (stage 11): --ft-table short (the demo: the 10-minute budget, the pretrained encoder against random init,
# one seed each: a part of the full grid, whose runs it reuses and which reuses them) or full (both budgets, 3 seeds each, the documented table); --ft-budgets, --ft-seeds,
# --ft-steps override the table's choice. Each run: nest-ssl finetune with these options, then --ft-opts.
ft_table=short
ft_budgets=""                     # default: short 10min; full "10min 1h"
ft_seeds=""                       # default: short "1"; full "1 2 3"
ft_inits="pretrained random_init" # which initialisations (random_init alone needs no pretrained encoder)
ft_steps=""                       # NAME=STEPS per budget; default: short 10min=400; full 10min=400,1h=1500
ft_tokenizer_opts="--tokenizer-type bpe --vocab-size 256"   # stage 10, trained on the largest budget's transcripts
ft_tokenizer_lm_text=false        # and on the LM text too (for tiny budgets, which miss letters that dev/test have)
# AdamW at a constant 2e-3, the encoder frozen for the first 100 steps (fairseq's freeze_finetune_updates, in small),
# SpecAugment with NeMo's mask widths and half its time masks.
ft_opts="--lr 2e-3 --batch-size 8 --save-every 100 --freeze-encoder-steps 100 --spec-augment freq_masks=2"
ft_opts+=" --spec-augment freq_width=27 --spec-augment time_masks=5 --spec-augment time_width=0.05"
lm_order=3                        # stage 10: the word n-gram's order
decode_opts="--avg 2 --lm-weight 0.5 --word-score 1 --beam-size 50"   # LM weight and word score: the best of 4 on dev

help_message="Usage: $0 [options]
Stages: 0 generate a LibriLight-format corpus, a labelled evaluation set and a MUSAN-format noise set
        1-7 those of egs/librilight on them (manifests, noise set, windows + validation split, Shar shards
        (--use-shar true), bucket bins, training with the tiny config on the CPU, export and summary)
        8 downstream evaluation of the encoder on the labelled set
        9 labelled ASR sets: training budgets, dev and test of unseen speakers, an LM text
        10 a tokenizer from the largest budget's transcripts, and the n-gram LM
        11 CTC fine-tuning: the pretrained encoder and random init, seeds x budgets (--ft-table)
        12 decoding dev and test, greedy and with the LM   13 the table and results.json
Options (default):
  --stage N ($stage)  --stop-stage N ($stop_stage)  --force true|false ($force)  --nj N ($nj)
  --data-dir DIR ($data_dir)  --exp-dir DIR ($exp_dir)
  --speakers N ($speakers)  --books N ($books)  --files N ($files) (per book)
  --min-seconds S ($min_seconds)  --max-seconds S ($max_seconds)  --corpus-seed N ($corpus_seed)
  --eval-speakers N ($eval_speakers)  --eval-utterances N ($eval_utterances)  --noise-files N ($noise_files)
  --noise-parts LIST ($noise_parts)  --noise-window SEC ($noise_window)  --check-audio header|tail|full ($check_audio)
  --prepare-chunk-size N ($prepare_chunk_size)
  --min-duration SEC ($min_duration)  --max-duration SEC ($max_duration)  --max-pause SEC ($max_pause)
  --val-speakers N ($val_speakers)  --max-val-hours H ($max_val_hours)  --seed N ($seed)
  --use-shar true|false ($use_shar)  --shard-size N ($shard_size)  --num-buckets N ($num_buckets)
  --config-path DIR ($config_path)  --config-name NAME ($config_name)  --exp-name NAME ($exp_name)
  --ngpus N ($ngpus)  --nnodes N ($nnodes)  --node-rank N ($node_rank)  --master-addr HOST ($master_addr)
  --master-port PORT ($master_port)  --save-every-steps N ($save_every_steps)  --val-every-steps N ($val_every_steps)
  --launcher torchrun|srun ($launcher)
  --train-opts \"OVERRIDES\" (after: $mini_train_opts)  --eval-opts \"OPTIONS\" ($eval_opts)
  --asr-train-speakers N ($asr_train_speakers)  --asr-dev-speakers N ($asr_dev_speakers)
  --asr-test-speakers N ($asr_test_speakers)  --asr-budgets NAME=SEC,... ($asr_budgets)
  --asr-dev-utterances N ($asr_dev_utterances)  --asr-test-utterances N ($asr_test_utterances)
  --lm-sentences N ($lm_sentences)  --ft-table short|full ($ft_table)  --ft-budgets \"NAMES\" (short: 10min;
  full: 10min 1h)  --ft-seeds \"N...\" (short: 1; full: 1 2 3)  --ft-steps NAME=N,... (short: 10min=400;
  full: 10min=400,1h=1500)  --ft-tokenizer-opts \"OPTIONS\" ($ft_tokenizer_opts)
  --ft-inits \"pretrained random_init\"  --ft-tokenizer-lm-text true|false ($ft_tokenizer_lm_text)
  --lm-order N ($lm_order)
  --ft-opts \"OPTIONS\" ($ft_opts)
  --decode-opts \"OPTIONS\" ($decode_opts)"

. "$nest_repo/local/parse_options.sh"
check_choice launcher torchrun srun
check_int 0 save_every_steps val_every_steps stage stop_stage val_speakers seed ngpus node_rank corpus_seed
check_int 1 lm_order asr_train_speakers asr_dev_speakers asr_test_speakers asr_dev_utterances asr_test_utterances lm_sentences
check_choice ft_table short full
check_int 1 nj prepare_chunk_size shard_size speakers books files eval_speakers eval_utterances noise_files
check_int 1 num_buckets nnodes master_port
check_float 0 min_seconds max_seconds noise_window min_duration max_duration max_pause max_val_hours
recipe_cd data_dir exp_dir config_path
train_opts="$mini_train_opts $train_opts"
corpus_dir=$data_dir/corpus   # stage 0 writes these; stages 1-2 read them
musan_dir=$data_dir/musan
subsets=small
done_dir=$data_dir/.done

# Stages 0-5 write into $data_dir: one run at a time prepares it (local/stages.sh drops the lock before training, so
# other runs can train from the same data folder meanwhile).
if [ "$stage" -le 5 ]; then recipe_lock "$data_dir"; fi

if stage_begin 0 "generate a LibriLight-format corpus and a MUSAN-format noise set" opt:speakers="$speakers" \
    opt:books="$books" opt:files="$files" opt:min_seconds="$min_seconds" opt:max_seconds="$max_seconds" \
    opt:corpus_seed="$corpus_seed" opt:noise_files="$noise_files" opt:eval_speakers="$eval_speakers" \
    opt:eval_utterances="$eval_utterances" in:"$nest_repo/local/make_mini_corpus.py" \
    in:"$nest_repo/nest_ssl/prepare/tts_corpus.py" in:"$nest_repo/nest_ssl/prepare/sentences.py" \
    in:"$nest_repo/nest_ssl/prepare/tts.py" out:"$data_dir/corpus" out:"$data_dir/labelled" out:"$data_dir/musan"; then
  rm -rf "$data_dir/corpus" "$data_dir/labelled" "$data_dir/musan"
  python "$nest_repo/local/make_mini_corpus.py" corpus "$data_dir/corpus" --subsets small --speakers "$speakers" \
    --books "$books" --files "$files" --min-seconds "$min_seconds" --max-seconds "$max_seconds" --seed "$corpus_seed" \
    --labelled-dir "$data_dir/labelled" --eval-speakers "$eval_speakers" --eval-utterances "$eval_utterances"
  python "$nest_repo/local/make_mini_corpus.py" noise "$data_dir/musan" --files "$noise_files"
  stage_end 0
fi

# Stages 1-3: manifests, noise set, training windows and validation split -> $data_dir/cuts, $noise_cuts
. "$nest_repo/local/librilight_stages.sh"
# Stages 4-7: bucket bins (Shar with --use-shar true), training, export and summary -> $run_dir
. "$nest_repo/local/stages.sh"

# Stage 8: how good is the encoder? nest-ssl evaluate (docs/evaluation.md) on the labelled set: frozen phone,
# speaker and CTC-ASR probes (by default; and evaluate's short CTC fine-tuning with other --eval-opts), the pretrained
# model against its random-init twins and log-mel features, in one run. The table is printed and written to $run_dir/eval/results.json.
if stage_begin 8 "downstream evaluation on the labelled set" opt:eval_opts="$eval_opts" \
    in:"$run_dir/export/model.nemo" in:"$data_dir/labelled" out:"$run_dir/eval"; then
  [ -f "$run_dir/export/model.nemo" ] || die "Stage 8: $run_dir/export/model.nemo is missing; run stages 6-7 first"
  rm -rf "$run_dir/eval"
  # shellcheck disable=SC2086
  nest-ssl evaluate --model "$run_dir/export/model.nemo" --train-cuts "$data_dir/labelled/train.jsonl.gz" \
    --dev-cuts "$data_dir/labelled/dev.jsonl.gz" --test-cuts "$data_dir/labelled/test.jsonl.gz" \
    --out-dir "$run_dir/eval" $eval_opts
  stage_end 8
fi

# Stages 9-13: from encoder to recognizer (docs/asr.md), Libri-light's limited-supervision setting in small.
# Stage 9 writes $data_dir/asr (its marker in $data_dir/.done, with the other data stages'): NeMo manifests
# train_<budget>.json (nested budgets), dev.json and test.json, read by speakers after those of stage 0's corpus and
# labelled set in the same speaker pool (so none is pretrained on), and lm.txt, the grammar's sentences without any
# dev or test one. Its own random streams: stage 0's outputs do not change.
asr_dir=$data_dir/asr
done_dir=$data_dir/.done
if stage_in_range 9; then recipe_lock "$data_dir"; fi   # it writes the data folder, as stages 0-5 do
if stage_begin 9 "labelled ASR sets: training budgets, dev and test of unseen speakers, LM text" \
    opt:speakers="$speakers" opt:eval_speakers="$eval_speakers" opt:corpus_seed="$corpus_seed" \
    opt:asr_train_speakers="$asr_train_speakers" opt:asr_dev_speakers="$asr_dev_speakers" \
    opt:asr_test_speakers="$asr_test_speakers" opt:asr_budgets="$asr_budgets" \
    opt:asr_dev_utterances="$asr_dev_utterances" opt:asr_test_utterances="$asr_test_utterances" \
    opt:lm_sentences="$lm_sentences" in:"$nest_repo/local/make_mini_corpus.py" \
    in:"$nest_repo/nest_ssl/prepare/tts_asr.py" in:"$nest_repo/nest_ssl/prepare/sentences.py" \
    in:"$nest_repo/nest_ssl/prepare/tts.py" out:"$asr_dir"; then
  rm -rf "$asr_dir"
  python "$nest_repo/local/make_mini_corpus.py" asr "$asr_dir" --skip-speakers $((speakers + eval_speakers)) \
    --train-speakers "$asr_train_speakers" --dev-speakers "$asr_dev_speakers" --test-speakers "$asr_test_speakers" \
    --budgets "$asr_budgets" --dev-utterances "$asr_dev_utterances" --test-utterances "$asr_test_utterances" \
    --lm-sentences "$lm_sentences" --seed "$corpus_seed"
  stage_end 9
fi
recipe_unlock
done_dir=$run_dir/.done

# The grid: --ft-table picks budgets, seeds and steps; --ft-budgets/--ft-seeds/--ft-steps override them.
if [ "$ft_table" = full ]; then
  : "${ft_budgets:=10min 1h}" "${ft_seeds:=1 2 3}" "${ft_steps:=10min=400,1h=1500}"
else
  : "${ft_budgets:=10min}" "${ft_seeds:=1}" "${ft_steps:=10min=400}"
fi
ft_dir=$run_dir/finetune
largest_budget=$(python -c 'import sys; b = dict(x.split("=") for x in sys.argv[1].split(",") if x)
print(max(b, key=lambda k: float(b[k])))' "$asr_budgets")
budget_steps() {  # the --ft-steps entry of budget $1
  local item
  for item in ${ft_steps//,/ }; do
    [ "${item%%=*}" = "$1" ] && { echo "${item#*=}"; return 0; }
  done
  die "--ft-steps '$ft_steps' has no entry for budget $1 (NAME=STEPS,...)"
}
ft_runs=""
for b in $ft_budgets; do
  [[ ",$asr_budgets" == *",$b="* ]] || die "--ft-budgets: $b is not one of --asr-budgets ($asr_budgets)"
  [[ "$(budget_steps "$b")" =~ ^[1-9][0-9]*$ ]] || die "--ft-steps: the steps of $b must be a positive integer"
  for init in $ft_inits; do
    [ "$init" = pretrained ] || [ "$init" = random_init ] || die "--ft-inits: '$init' is not pretrained or random_init"
    for s in $ft_seeds; do
      [[ "$s" =~ ^[0-9]+$ ]] || die "--ft-seeds: '$s' is not a seed (a non-negative integer)"
      ft_runs+="${b}_${init}_seed$s "
    done
  done
done

# Stages 10-13 write $ft_dir and their markers in $run_dir/.done: one run of them at a time per run folder (each
# fine-tuning also locks its own folder).
if [ "$stop_stage" -ge 10 ] && [ "$stage" -le 13 ]; then recipe_lock "$ft_dir" --exp-name; fi

# Stage 10: one tokenizer for every run (trained on the largest budget's transcripts, so every budget spells with
# the same vocabulary) and the n-gram LM from lm.txt (ARPA, our own Kneser-Ney estimation).
tokenizer_extra=""
[ "$ft_tokenizer_lm_text" = true ] && tokenizer_extra="--extra-text $asr_dir/lm.txt"
if stage_begin 10 "tokenizer ($ft_tokenizer_opts) and ${lm_order}-gram LM" opt:ft_tokenizer_opts="$ft_tokenizer_opts" \
    opt:ft_tokenizer_lm_text="$ft_tokenizer_lm_text" \
    opt:lm_order="$lm_order" in:"$asr_dir/train_$largest_budget.json" in:"$asr_dir/lm.txt" \
    in:"$nest_repo/local/asr_lang.py" out:"$ft_dir/tokenizer" out:"$ft_dir/lm.arpa"; then
  mkdir -p "$ft_dir"
  # shellcheck disable=SC2086
  python "$nest_repo/local/asr_lang.py" tokenizer "$asr_dir/train_$largest_budget.json" "$ft_dir/tokenizer" \
    $ft_tokenizer_opts $tokenizer_extra
  python "$nest_repo/local/asr_lang.py" lm "$asr_dir/lm.txt" "$ft_dir/lm.arpa" --order "$lm_order"
  stage_end 10
fi

# Runs a command per grid run, --nj at a time (one thread each); a run that fails stops the stage once the others
# are done. $1: stage, $2: the function that runs one (its argument: the run's name).
run_grid() {
  local n=$1 fn=$2 r pids=() names=() failed=""
  for r in $ft_runs; do
    "$fn" "$r" &
    pids+=($!)
    names+=("$r")
    while [ "$(jobs -rp | wc -l)" -ge "$nj" ]; do wait -n || true; done
  done
  for i in "${!pids[@]}"; do wait "${pids[$i]}" || failed+=" ${names[$i]}"; done
  [ -z "$failed" ] || die "Stage $n failed for:$failed (see $ft_dir/log/)"
}

# A grid run is done when its folder holds the same settings file and the result; else it (re)starts. The settings
# name the inputs by content (the pretrained model, the manifest, the tokenizer), so a new pretraining or new data
# retrains, while a killed stage resumes each fine-tuning from its last checkpoint (nest-ssl finetune resumes).
fingerprint() { cat "$@" | cksum | cut -d' ' -f1; }

finetune_one() {
  local r=$1 b=${1%%_*} rest=${1#*_} init seed steps settings
  init=${rest%_seed*}
  seed=${rest##*_seed}
  steps=$(budget_steps "$b")
  local init_opt=""
  [ "$init" = pretrained ] && init_opt="--init-from $run_dir/export/model.nemo"
  settings="steps=$steps seed=$seed init=$init opts=$ft_opts data=$(fingerprint "$asr_dir/train_$b.json")"
  settings+=" tokenizer=$(fingerprint "$ft_dir/tokenizer/"*)"
  [ "$init" = pretrained ] && settings+=" model=$(fingerprint "$run_dir/export/model.nemo")"
  local old="" last=0
  [ -f "$ft_dir/$r/settings.txt" ] && old=$(cat "$ft_dir/$r/settings.txt")
  if [ -d "$ft_dir/$r" ]; then
    last=$(find "$ft_dir/$r" -maxdepth 1 -name 'step-*.ckpt' | sed 's/.*step-\([0-9]*\)\.ckpt/\1/' | sort -n | tail -n 1)
  fi
  if [ "$old" = "$settings" ] && [ "${last:-0}" -eq "$steps" ]; then
    log "Stage 11: $r up to date"
    return 0
  fi
  # Other settings: start over. The same but for more steps: nest-ssl finetune resumes from the last checkpoint
  # (as it does after a kill); fewer steps than already trained: start over.
  if [ -n "$old" ] && { [ "${old#* }" != "${settings#* }" ] || [ "${last:-0}" -gt "$steps" ]; }; then
    rm -rf "$ft_dir/$r"
  fi
  mkdir -p "$ft_dir/$r" "$ft_dir/log"
  echo "$settings" > "$ft_dir/$r/settings.txt"
  log "Stage 11: fine-tuning $r ($steps steps; log: $ft_dir/log/$r.log)"
  local t0=$SECONDS
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nest-ssl finetune --train-manifest "$asr_dir/train_$b.json" \
    --dev-manifest "$asr_dir/dev.json" --out-dir "$ft_dir/$r" --tokenizer "$ft_dir/tokenizer" $init_opt \
    --seed "$seed" --steps "$steps" $ft_opts >> "$ft_dir/log/$r.log" 2>&1 || return 1
  log "Stage 11: $r done in $((SECONDS - t0)) s: $(tail -n 1 "$ft_dir/log/$r.log")"
}

# Stage 11: fine-tuning, the pretrained encoder (stage 7's export) and random init, each seed and budget.
pretrained_in=()
if [[ " $ft_inits " == *" pretrained "* ]] && stage_in_range 11; then
  [ -f "$run_dir/export/model.nemo" ] || die "Stage 11: $run_dir/export/model.nemo is missing; run stages 6-7 first"
  pretrained_in=(in:"$run_dir/export/model.nemo")
fi
if stage_begin 11 "CTC fine-tuning ($ft_table: ${ft_budgets// /, } x ${ft_inits// /, } x seeds ${ft_seeds// /, })" \
    opt:ft_runs="$ft_runs" opt:ft_steps="$ft_steps" opt:ft_opts="$ft_opts" "${pretrained_in[@]}" \
    in:"$asr_dir" in:"$ft_dir/tokenizer"; then
  run_grid 11 finetune_one
  stage_end 11
fi

decode_one() {
  local r=$1 settings
  settings="opts=$decode_opts model=$(fingerprint "$ft_dir/$r/settings.txt" "$ft_dir/$r/log.tsv")"
  settings+=" data=$(fingerprint "$asr_dir/dev.json" "$asr_dir/test.json" "$ft_dir/lm.arpa")"
  if [ -f "$ft_dir/$r/decode/settings.txt" ] && [ "$(cat "$ft_dir/$r/decode/settings.txt")" = "$settings" ] && \
      [ -f "$ft_dir/$r/decode/wer-summary-test-lm.txt" ]; then
    log "Stage 12: $r up to date"
    return 0
  fi
  rm -rf "$ft_dir/$r/decode"
  mkdir -p "$ft_dir/log"
  # shellcheck disable=SC2086
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 nest-ssl decode --model "$ft_dir/$r" --test dev="$asr_dir/dev.json" \
    --test test="$asr_dir/test.json" --out-dir "$ft_dir/$r/decode.tmp" --lm "$ft_dir/lm.arpa" $decode_opts \
    > "$ft_dir/log/decode-$r.log" 2>&1 || return 1
  echo "$settings" > "$ft_dir/$r/decode.tmp/settings.txt"
  mv "$ft_dir/$r/decode.tmp" "$ft_dir/$r/decode"
  log "Stage 12: $r: $(grep -h . "$ft_dir/$r/decode/wer-summary-test-"*.txt | grep -v ^settings | tr '\t\n' ' ')"
}

# Stage 12: decoding dev and test, greedy and with the LM (icefall-style recogs-/errs-/wer-summary- files in each
# run's decode/).
decode_ins=()
for r in $ft_runs; do decode_ins+=(in:"$ft_dir/$r/settings.txt" in:"$ft_dir/$r/log.tsv"); done
if stage_in_range 12; then
  for r in $ft_runs; do
    [ -f "$ft_dir/$r/log.tsv" ] || die "Stage 12: $ft_dir/$r is not fine-tuned; run stage 11 first"
  done
fi
if stage_begin 12 "decoding dev and test, greedy and with the LM ($decode_opts)" opt:ft_runs="$ft_runs" \
    opt:decode_opts="$decode_opts" in:"$ft_dir/lm.arpa" in:"$asr_dir/dev.json" in:"$asr_dir/test.json" \
    "${decode_ins[@]}"; then
  run_grid 12 decode_one
  stage_end 12
fi

# Stage 13: the table (test set: budget x init x decoding, WER and CER, mean ± std over seeds) and results.json,
# from the decoding files of this grid's runs.
table_ins=()
for r in $ft_runs; do table_ins+=(in:"$ft_dir/$r/decode/wer-summary-test-greedy.txt" \
  in:"$ft_dir/$r/decode/wer-summary-test-lm.txt"); done
if stage_begin 13 "the fine-tuning table" opt:ft_runs="$ft_runs" in:"$nest_repo/local/asr_table.py" \
    "${table_ins[@]}" out:"$ft_dir/table.txt" out:"$ft_dir/results.json"; then
  python "$nest_repo/local/asr_table.py" "$ft_dir" --runs "${ft_runs% }" > "$ft_dir/table.txt.tmp"
  mv "$ft_dir/table.txt.tmp" "$ft_dir/table.txt"
  stage_end 13
  cat "$ft_dir/table.txt"
fi
