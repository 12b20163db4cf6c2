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
stop_stage=8
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
# win (e.g. --train-opts "trainer.max_steps=2000" for the longer setting). A training run that learns within the
# demo's budget (docs/learning.md): 160 ms mask blocks instead of NEST's 400 ms, which a 2-layer model on an hour of
# speech cannot bridge; NEST's augmentation off, which holds a model this small at the floor; gradient clipping.
save_every_steps=250
val_every_steps=250
mini_train_opts="trainer.max_steps=2000"
mini_train_opts+=" model.train_ds.batch_size=8 model.masking.block_size=16 model.masking.mask_prob=0.025"
mini_train_opts+=" model.train_ds.batch_augmentor.prob=0.0 model.validation_ds.batch_augmentor.prob=0.0"
mini_train_opts+=" trainer.gradient_clip_val=1.0 ++nest_trainer.health.floor_patience_steps=500"
train_opts=""
eval_opts="--threads 2"   # stage 8: options of nest-ssl evaluate (see nest-ssl evaluate --help)

help_message="Usage: $0 [options]
Stages: 0 generate a LibriLight-format corpus, a labelled evaluation set and a MUSAN-format noise set
        1-7 those of egs/librilight on them (manifests, noise set, windows + validation split, Shar shards
        (--use-shar true), bucket bins, training with the tiny config on the CPU, export and summary)
        8 downstream evaluation of the encoder on the labelled set
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
  --train-opts \"OVERRIDES\" (after: $mini_train_opts)  --eval-opts \"OPTIONS\" ($eval_opts)"

. "$nest_repo/local/parse_options.sh"
check_choice launcher torchrun srun
check_int 0 save_every_steps val_every_steps stage stop_stage val_speakers seed ngpus node_rank corpus_seed
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
    out:"$data_dir/corpus" out:"$data_dir/labelled" out:"$data_dir/musan"; then
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
# speaker and CTC-ASR probes and CTC fine-tuning, the pretrained model against its random-init twins and log-mel
# features, in one run. The table is printed and written to $run_dir/eval/results.json.
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
