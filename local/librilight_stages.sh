# Stages 1-3 for a corpus in LibriLight's layout (egs/librilight, egs/mini): manifests, the noise set, training
# windows and a validation split by speaker. Sourced by a recipe after its options are parsed and checked:
#
#   . "$nest_repo/local/librilight_stages.sh"
#
# Reads: corpus_dir subsets musan_dir data_dir nj noise_parts noise_window check_audio prepare_chunk_size
#        min_duration max_duration max_pause val_speakers max_val_hours seed (and stage, stop_stage, force)
# Writes: $data_dir/manifests/librilight_{recordings,supervisions,cuts}_<subset>.jsonl.gz, $data_dir/noise,
#         $data_dir/cuts/{train,val}.jsonl.gz; markers in $data_dir/.done.
# Sets: noise_cuts (the noise manifest, "" without --musan-dir), which local/stages.sh reads.

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
[ -z "$musan_dir" ] || noise_cuts=$data_dir/noise/noise_cuts.jsonl.gz

if stage_begin 1 "LibriLight manifests ($subsets)" opt:subsets="$subsets" opt:check_audio="$check_audio" \
    "${stage1_io[@]}"; then
  # Streams the corpus in --nj processes; a killed run resumes from its finished chunks, and every bad file is
  # listed with the reason in $manifests/rejects_<subset>.tsv instead of stopping the run.
  nest-ssl prepare librilight "$corpus_dir" "$manifests" --subsets "$subsets" --num-jobs "$nj" \
    --check-audio "$check_audio" --chunk-size "$prepare_chunk_size"
  stage_end 1
fi

if [ -z "$musan_dir" ]; then
  if stage_in_range 2; then log "Stage 2: no noise folder (--musan-dir ''): training mixes speech only"; fi
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
