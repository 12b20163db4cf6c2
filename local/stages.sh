# Stages 4-7, the same for every corpus: Shar shards (optional), bucket bins, training, export and summary.
# Sourced by a recipe once its own stages have written the training data:
#
#   . "$nest_repo/local/stages.sh"
#
# Needs: $data_dir/cuts/train.jsonl.gz, $data_dir/cuts/val.jsonl.gz and noise_cuts (a noise manifest, or "").
# Reads: data_dir exp_dir seed nj use_shar shard_size num_buckets config_path config_name exp_name ngpus nnodes
#        node_rank master_addr master_port launcher save_every_steps val_every_steps train_opts (and stage,
#        stop_stage, force)
# Writes: $data_dir/shar/train (--use-shar true), $data_dir/bucket_bins.txt (markers in $data_dir/.done), and the
#         run folder $exp_dir/<exp-name> (markers in <run folder>/.done).
# Sets: run_dir (the run folder), which a recipe's later stages (evaluation) read.

done_dir=$data_dir/.done
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

# The data is prepared: from here on this run only reads it, and other runs may train from it at the same time, each
# in its own run folder (which the trainer locks). (Preparing it anew meanwhile changes what they read: don't.)
recipe_unlock

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
stage_marker_readonly=false
[ "$node_rank" -eq 0 ] || stage_marker_readonly=true
if stage_begin 6 "training ($config_name, $nnodes node(s) x $ngpus GPU(s))" opt:config_name="$config_name" \
    opt:save_every_steps="$save_every_steps" opt:val_every_steps="$val_every_steps" opt:train_opts="$train_opts" \
    opt:use_shar="$use_shar" in:"$config_path/$config_name.yaml" \
    in:"$train_manifest" in:"$data_dir/cuts/val.jsonl.gz" in:"$data_dir/bucket_bins.txt" \
    ${noise_cuts:+in:"$noise_cuts"} out:"$ckpt_dir"; then
  if [ "$ngpus" -gt 0 ]; then
    visible=$(python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
    [ "$visible" -ge "$ngpus" ] || die "Stage 6: --ngpus $ngpus, but this machine has $visible CUDA GPU(s) visible;" \
      "--ngpus 0 trains on the CPU (one process per node)"
  fi
  # exp_manager.resume_if_exists (true in the configs): a rerun continues from the last checkpoint. That is right
  # for a killed run, --stage 6 and changed --train-opts (e.g. more steps), but not when the data or the config
  # file changed since the run finished: that run is kept under another name and a new one starts.
  if [ "$node_rank" -eq 0 ] && [ -d "$ckpt_dir" ] &&
      [[ "$stage_why" == "input "*" changed" || "$stage_why" == "the set of inputs changed" ]]; then
    old_run=$run_dir.before-$(date '+%Y%m%d-%H%M%S')
    mv "$run_dir" "$old_run"
    mkdir -p "$done_dir"
    mv "$old_run/.done/stage6.pending" "$done_dir/"
    log "Stage 6: $stage_why since the last run finished: that run is now $old_run; training starts anew"
  fi
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
  # Checkpoints and validation by optimizer step, whatever the epoch length: NEST's val_check_interval counts the
  # batches of one epoch (check_val_every_n_epoch: 1), and an epoch per GPU shorter than that never validates, so
  # never checkpoints. The last checkpoint every --save-every-steps steps, whether or not a validation ran (top-k
  # files ranked by the latest val_loss); validation every --val-every-steps steps counted across epochs.
  if [ "$save_every_steps" -gt 0 ]; then
    overrides+=("++exp_manager.checkpoint_callback_params.every_n_train_steps=$save_every_steps")
  fi
  if [ "$val_every_steps" -gt 0 ]; then
    overrides+=("++trainer.val_check_interval=$val_every_steps" "++trainer.check_val_every_n_epoch=null")
  fi
  if [ "$ngpus" -eq 0 ]; then
    overrides+=("trainer.accelerator=cpu" "trainer.devices=1" "trainer.strategy=auto")
    nproc=1
  else
    overrides+=("trainer.accelerator=gpu" "trainer.devices=$ngpus")
    nproc=$ngpus
  fi
  if [ "${launcher:-torchrun}" = srun ]; then
    # Inside a SLURM job (sbatch, salloc): srun starts one task per device on every node, and each takes its rank,
    # the world size and the rendezvous (first node, a port from the job id) from SLURM's variables
    # (nest_ssl/train/slurm.py). No torchrun; stage 6 runs once, in the job script, not once per node. srun exits
    # with the highest exit status of its tasks.
    [ -n "${SLURM_JOB_ID:-}" ] || die "Stage 6: --launcher srun runs inside a SLURM job (sbatch or salloc);" \
      "there is no SLURM_JOB_ID here"
    [ "$node_rank" -eq 0 ] || die "Stage 6: --launcher srun starts every node's processes from one run.sh;" \
      "run it once (--node-rank 0), in the job script"
    train_cmd=(srun --nodes "$nnodes" --ntasks-per-node "$nproc" python)
  elif [ "$nnodes" -eq 1 ]; then
    train_cmd=(python -m torch.distributed.run --standalone --nnodes 1 --nproc_per_node "$nproc")
  else
    train_cmd=(python -m torch.distributed.run --nnodes "$nnodes" --node_rank "$node_rank" --master_addr "$master_addr"
      --master_port "$master_port" --nproc_per_node "$nproc")
  fi
  # Preemption: SIGTERM (a scheduler's stop; torchrun passes it on to its workers) and SIGUSR1 (SLURM's
  # --signal=USR1@T) make the training processes write their last checkpoint first and exit with EXIT_RESUMABLE.
  # torchrun dies of SIGUSR1 (it handles TERM, INT, HUP and QUIT), so it starts with SIGUSR1 ignored; the training
  # processes install their own handler. This shell survives both signals and passes them on, for a signal that
  # reaches only the job's shell (--signal=B:USR1@T): as SIGUSR1 to torchrun's training processes, or to srun, which
  # forwards signals to its tasks. Then it waits for the launcher to end.
  exit_resumable=75  # EXIT_RESUMABLE, nest_ssl/train/exit_codes.py
  train_trapped=false
  stop_signal=""
  forward_stop() {
    stop_signal=$1
    train_trapped=true
    local workers
    if [ "${launcher:-torchrun}" = srun ]; then
      kill -s "$1" "$launcher_pid" 2>/dev/null || true
      return 0
    fi
    workers=$(cat /proc/"$launcher_pid"/task/*/children 2>/dev/null || true)
    # shellcheck disable=SC2086
    [ -z "$workers" ] || kill -USR1 $workers 2>/dev/null || true
  }
  if [ "${launcher:-torchrun}" = srun ]; then
    # shellcheck disable=SC2086
    (exec "${train_cmd[@]}" "$nest_repo/recipes/nest/train.py" \
      --config-path "$config_path" --config-name "$config_name" "${overrides[@]}" $train_opts) &
  else
    # shellcheck disable=SC2086
    (trap '' USR1; exec "${train_cmd[@]}" "$nest_repo/recipes/nest/train.py" \
      --config-path "$config_path" --config-name "$config_name" "${overrides[@]}" $train_opts) &
  fi
  launcher_pid=$!
  trap 'forward_stop TERM' TERM
  trap 'forward_stop USR1' USR1
  while :; do
    train_trapped=false
    train_rc=0
    wait "$launcher_pid" || train_rc=$?
    $train_trapped || break  # the launcher ended (a trapped signal interrupts `wait` with 128+N: wait again)
  done
  trap - TERM USR1
  # torchrun exits 1 whenever a training process exits non-zero (srun passes its tasks' highest status on), so how
  # the run ended is read from the status file that global rank 0 writes into the run folder
  # (nest_ssl/train/run_status.py). Only a finished run is marked done; a resumable stop (SIGTERM, SIGUSR1,
  # exp_manager.max_time_per_run) leaves the marker pending and ends the recipe with EXIT_RESUMABLE, so that the
  # same command (or a requeued job) continues the run.
  train_status=$(python "$nest_repo/local/summary.py" train-status "$run_dir")
  read -r train_exit train_state train_reason train_step <<< "$train_status"
  if [ "$train_exit" != none ] && [ "$train_state" = resumable ]; then
    log "Stage 6: training stopped at step $train_step ($train_reason${stop_signal:+, SIG$stop_signal}) after" \
      "writing its last checkpoint; run the same command again to continue it (exit status $train_exit)"
    exit "$train_exit"
  fi
  if [ "$train_rc" -eq "$exit_resumable" ]; then
    log "Stage 6: training stopped to be continued (exit status $train_rc); run the same command again to" \
      "continue it"
    exit "$train_rc"
  fi
  if [ "$train_rc" -ne 0 ]; then
    log "ERROR: Stage 6: training failed (exit status $train_rc${stop_signal:+, after SIG$stop_signal}); run the" \
      "same command again to continue from the last checkpoint"
    exit "$train_rc"
  fi
  stage_end 6
fi
stage_marker_readonly=false

# The summary reports the data too (hours of training and validation audio), so new cuts refresh it.
if [ "$node_rank" -ne 0 ]; then
  if stage_in_range 7; then log "Stage 7: skipped on node $node_rank (node 0 exports)"; fi
elif stage_begin 7 "export and summary" in:"$ckpt_dir" in:"$data_dir/cuts/train.jsonl.gz" \
    in:"$data_dir/cuts/val.jsonl.gz" out:"$run_dir/export/model.nemo" out:"$run_dir/export/encoder.ckpt" \
    out:"$run_dir/summary.txt"; then
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
