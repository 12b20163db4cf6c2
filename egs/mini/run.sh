#!/usr/bin/env bash
# The embedded default: NEST end to end with no download, on a CPU, in a few minutes.
#
# Stage 0 generates data/corpus, a small corpus in LibriLight's layout (English speech synthesised offline by
# espeak-ng, many speakers, with LibriLight's VAD JSON beside each file), data/labelled, a labelled evaluation set
# (lhotse CutSets with text, speaker and word/phone alignments, from other speakers and other sentences), and
# data/musan, a noise set in MUSAN's layout. Then the stages of ../librilight/run.sh
# run on them with the tiny config: manifests, noise windows, training windows and a speaker-held-out
# validation split, bucket bins, training, export, and the summary with the loss plot.
#
#   ./run.sh                                  # everything (`make demo` from the repository root does this)
#   ./run.sh --stage 6                        # train again: resumes from the last checkpoint
#   ./run.sh --train-opts "trainer.max_steps=200"   # any option of ../librilight/run.sh works here too
set -euo pipefail
. "$(dirname "$0")/../../local/common.sh"   # log, die, stage_begin/stage_end, recipe_cd, nest-ssl, $nest_repo

stage=0
stop_stage=8
force=false
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
val_speakers=2
exp_name=nest_tiny
# Training: ../librilight/run.sh stage 6 gets these overrides (NeMo's keys; README.md says why these values), then
# --train-opts, which win (e.g. --train-opts "trainer.max_steps=2000" for the longer setting).
mini_train_opts="trainer.max_steps=2000 trainer.val_check_interval=250 trainer.check_val_every_n_epoch=null"
mini_train_opts+=" model.train_ds.batch_size=8 model.masking.block_size=16 model.masking.mask_prob=0.025"
mini_train_opts+=" model.train_ds.batch_augmentor.prob=0.0 model.validation_ds.batch_augmentor.prob=0.0"
mini_train_opts+=" trainer.gradient_clip_val=1.0 ++nest_trainer.health.floor_patience_steps=500"
train_opts=""
eval_opts="--threads 2"   # stage 8: options of nest-ssl evaluate (see nest-ssl evaluate --help)

help_message="Usage: $0 [options]
Generates a LibriLight-format corpus, a labelled evaluation set and a MUSAN-format noise set (stage 0), runs
../librilight/run.sh (stages 0-7) on them with the tiny config on the CPU, then evaluates the encoder (stage 8).
Options (default):
  --stage N ($stage)  --stop-stage N ($stop_stage)  --force true|false ($force)
  --data-dir DIR ($data_dir)  --exp-dir DIR ($exp_dir)
  --speakers N ($speakers)  --books N ($books)  --files N ($files) (per book)
  --min-seconds S ($min_seconds)  --max-seconds S ($max_seconds)  --corpus-seed N ($corpus_seed)
  --eval-speakers N ($eval_speakers)  --eval-utterances N ($eval_utterances)  --noise-files N ($noise_files)
  --val-speakers N ($val_speakers)  --exp-name NAME ($exp_name)
  --train-opts \"OVERRIDES\" (after: $mini_train_opts)  --eval-opts \"OPTIONS\" ($eval_opts)
and every option of ../librilight/run.sh (see ../librilight/run.sh --help), which override the settings below."

# Our own options are parsed here; the others are handed on to ../librilight/run.sh, which rejects unknown ones.
parse_options_passthrough=true
. "$nest_repo/local/parse_options.sh"
recipe_cd data_dir exp_dir corpus_dir musan_dir config_path   # the last three only when handed on
done_dir=$data_dir/.done

if stage_begin 0 "generate a LibriLight-format corpus and a MUSAN-format noise set" opt:speakers="$speakers" \
    opt:books="$books" opt:files="$files" opt:min_seconds="$min_seconds" opt:max_seconds="$max_seconds" \
    opt:corpus_seed="$corpus_seed" opt:noise_files="$noise_files" opt:eval_speakers="$eval_speakers" \
    opt:eval_utterances="$eval_utterances" in:"$nest_repo/local/make_mini_corpus.py" \
    in:"$nest_repo/nest_ssl/prepare/tts_corpus.py" in:"$nest_repo/nest_ssl/prepare/sentences.py" \
    out:"$data_dir/corpus" out:"$data_dir/labelled" out:"$data_dir/musan"; then
  rm -rf "$data_dir/corpus" "$data_dir/labelled" "$data_dir/musan"
  python "$nest_repo/local/make_mini_corpus.py" corpus "$data_dir/corpus" --subsets small --speakers "$speakers" \
    --books "$books" --files "$files" --min-seconds "$min_seconds" --max-seconds "$max_seconds" --seed "$corpus_seed" \
    --labelled-dir "$data_dir/labelled" --eval-speakers "$eval_speakers" --eval-utterances "$eval_utterances"
  python "$nest_repo/local/make_mini_corpus.py" noise "$data_dir/musan" --files "$noise_files"
  stage_end 0
fi

# The stages of egs/librilight with settings for a CPU and an hour of audio: 10 s windows, two speakers held out for
# validation, and a training run that learns within the demo's budget (docs/learning.md: 160 ms mask blocks instead
# of NEST's 400 ms, which a 2-layer model on an hour of speech cannot bridge; NEST's augmentation off, which holds a
# model this small at the floor; gradient clipping; validation every 250 steps counted over the run, since an epoch
# here is shorter than nest_tiny's val_check_interval). Options given to this
# script come last, so they win. --stage is handed on only when it was given, so that it forces a start there too.
forward=(--stop-stage "$((stop_stage < 7 ? stop_stage : 7))" --force "$force" --data-dir "$data_dir" --exp-dir "$exp_dir"
  --exp-name "$exp_name")
if [[ "$parsed_options" == *" stage "* ]]; then
  forward+=(--stage "$stage")
fi
if [ "$stage" -le 7 ]; then
  "$recipe_dir/../librilight/run.sh" \
    --corpus-dir "$data_dir/corpus" --musan-dir "$data_dir/musan" --subsets small --nj 2 \
    --min-duration 1.0 --max-duration 10 --val-speakers "$val_speakers" --num-buckets 4 \
    --config-name nest_tiny --ngpus 0 --train-opts "$mini_train_opts $train_opts" \
    "${forward[@]}" "${passthrough_args[@]}"
fi

# Stage 8: how good is the encoder? nest-ssl evaluate (docs/evaluation.md) on the labelled set: frozen phone,
# speaker and CTC-ASR probes and CTC fine-tuning, the pretrained model against its random-init twins and log-mel
# features, in one run. The table is printed and written to $run_dir/eval/results.json.
run_dir=$exp_dir/$exp_name
done_dir=$run_dir/.done
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
