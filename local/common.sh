# Shared helpers for egs/*/run.sh; source it near the top of a recipe:
#
#   . "$(dirname "$0")/../../local/common.sh"
#
# It provides
#   log MSG...          "YYYY-mm-dd HH:MM:SS (file:line:function) MSG" on stderr (ESPnet/icefall format)
#   die MSG...          log and exit 1
#   check_int MIN VAR...    each option VAR is an integer >= MIN, else one message and exit 2 (before anything is
#   check_float MIN VAR...  written); check_float takes decimals (1, 2.5, .5, 1e-3) >= MIN
#   check_choice VAR CHOICE...  the option VAR is one of CHOICE..., else one message and exit 2
#   recipe_cd VAR...    make the path options in VAR... that the user gave absolute, then cd to the recipe folder
#   recipe_lock DIR [OPTION]  hold a lock on DIR (DIR/.lock) for data preparation; a second run preparing DIR is
#                       refused, told to wait or to give another OPTION (default --data-dir)
#   recipe_unlock       drop it (before training: any number of runs train from one prepared DIR)
#   stage_in_range N    whether N lies in [--stage, --stop-stage]
#   stage_begin N DESC [opt:KEY=VALUE]... [in:PATH]... [out:PATH]...
#   stage_end N         see "Stage guards" below
#   nest-ssl ...        the nest-ssl command (through `python -m nest_ssl.cli` when no script is on PATH)
# and sets recipe_dir (the folder of the recipe script), nest_repo (the repository root) and NEST_PYTHON.

recipe_dir=$(cd "$(dirname "$0")" && pwd)
nest_repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

_log_at() {
  # $1: how many call frames above the caller of _log_at to report (0 = the function that called log).
  local d=$(($1 + 2))
  shift
  local file=${BASH_SOURCE[$d]:-?}
  local func=${FUNCNAME[$d]:-main}
  [ "$func" = source ] && func=main  # the top level of a sourced stage file (local/stages.sh) is the recipe's main
  printf '%s (%s:%s:%s) %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "${file##*/}" "${BASH_LINENO[$((d - 1))]:-0}" \
    "$func" "$*" >&2
}
log() { _log_at 0 "$*"; }
die() {
  _log_at 0 "ERROR: $*"
  exit 1
}

# Python: recipes call `python` from PATH (the Makefile puts .venv/bin first). When that python cannot see
# nest_ssl and lhotse (a bare system python), fall back to the repository's own virtual environment.
_nest_python_ok() {
  "$1" -c 'import importlib.util as u, sys; sys.exit(not (u.find_spec("nest_ssl") and u.find_spec("lhotse")))' \
    >/dev/null 2>&1
}
if ! _nest_python_ok python; then
  if [ -x "$nest_repo/.venv/bin/python" ] && _nest_python_ok "$nest_repo/.venv/bin/python"; then
    export PATH="$nest_repo/.venv/bin:$PATH"
  else
    die "no python with nest_ssl and lhotse on PATH; run 'make install' in $nest_repo first"
  fi
fi
NEST_PYTHON=$(command -v python)
if ! command -v nest-ssl >/dev/null 2>&1; then
  nest-ssl() { python -m nest_ssl.cli "$@"; }
fi

# Numeric options: checked right after parse_options.sh, so that a typo stops the recipe before it writes anything.
# Exit 2, as for the other mistakes on the command line (parse_options.sh).
_check_number() {
  local kind=$1 pattern=$2 min=$3 v value
  shift 3
  for v in "$@"; do
    value=${!v}
    if ! [[ "$value" =~ $pattern ]] || ! awk -v x="$value" -v m="$min" 'BEGIN { exit !(x + 0 >= m + 0) }'; then
      printf '%s: option --%s expects %s >= %s, got '"'"'%s'"'"'\n' "$0" "${v//_/-}" "$kind" "$min" "$value" >&2
      exit 2
    fi
  done
}
check_int() { _check_number "an integer" '^-?[0-9]+$' "$@"; }
# check_choice VAR CHOICE...: the option VAR is one of CHOICE..., else one message and exit 2.
check_choice() {
  local v=$1 c
  shift
  for c in "$@"; do [ "${!v}" = "$c" ] && return 0; done
  printf '%s: option --%s expects one of: %s; got '"'"'%s'"'"'\n' "$0" "${v//_/-}" "$*" "${!v}" >&2
  exit 2
}
check_float() { _check_number "a number" '^-?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$' "$@"; }

recipe_cd() {
  # Relative paths on the command line are meant from where the user stood; defaults (data_dir=data, ...)
  # are meant inside the recipe directory. Fix the former, then move into the latter.
  local v
  for v in "$@"; do
    if [[ "${parsed_options:- }" == *" $v "* ]] && [ -n "${!v}" ] && [[ "${!v}" != /* ]]; then
      printf -v "$v" '%s' "$PWD/${!v}"
    fi
  done
  cd "$recipe_dir"
}

# Data preparation, one run at a time per data folder: two runs writing the same manifests and markers would corrupt
# each other. Training does not hold it: any number of runs train from one prepared folder at once, each in its own
# run folder, which the trainer locks (nest_ssl/train/run_lock.py). A recipe takes the lock for its data stages and
# drops it (recipe_unlock) before training.
# flock(1) on DIR/.lock, through file descriptor 9, which the recipe (and the commands it starts) keep open until
# recipe_unlock or exit, so the lock goes away with the run however it ends; the file names its holder. Where flock(1)
# is missing or the file system refuses flock (Lustre without -o flock, some NFS), or NEST_SSL_LOCK_MODE=file: the
# lock is DIR/.lock.excl, created exclusively and naming host, PID and SLURM job (local/lock_file.py), removed by
# recipe_unlock or at exit; one left by a killed run is taken over once its holder is provably gone.
# NEST_SSL_LOCK_MODE=flock: flock only, no fallback.
recipe_lock() {
  local dir=$1 other=${2:---data-dir} holder rc out mode=${NEST_SSL_LOCK_MODE:-auto}
  case $mode in
    auto | flock | file) ;;
    *) die "NEST_SSL_LOCK_MODE=$mode: expected auto, flock or file" ;;
  esac
  mkdir -p "$dir"
  if [ "$mode" != file ] && command -v flock >/dev/null 2>&1; then
    exec 9>>"$dir/.lock"
    rc=0
    flock -n -E 200 9 2>/dev/null || rc=$?
    if [ $rc -eq 0 ]; then
      printf '%s pid %s on %s since %s\n' "$0" "$$" "$(hostname)" "$(date '+%Y-%m-%d %H:%M:%S')" > "$dir/.lock"
      recipe_lock_held=flock
      return 0
    fi
    exec 9>&-
    if [ $rc -eq 200 ]; then
      holder=$(cat "$dir/.lock" 2>/dev/null || true)
      die "$dir is in use by another run (${holder:-holder unknown}); wait for it to end or give another $other"
    fi
    [ "$mode" = auto ] || die "flock on $dir/.lock failed (the file system refuses flock?); NEST_SSL_LOCK_MODE=auto" \
      "falls back to a lock file there"
    log "flock is refused on $dir: locking it with $dir/.lock.excl instead"
  elif [ "$mode" = flock ]; then
    die "flock not found (util-linux), and NEST_SSL_LOCK_MODE=flock; it keeps two runs off one --data-dir"
  fi
  rc=0
  out=$(python "$nest_repo/local/lock_file.py" acquire "$dir/.lock.excl" --pid $$) || rc=$?
  case $rc in
    0)
      [ -z "$out" ] || log "$dir: $out"
      recipe_lock_held=$dir/.lock.excl
      trap recipe_unlock EXIT
      ;;
    3) die "$dir is in use by another run ($out holds $dir/.lock.excl); wait for it to end or give another" \
      "$other (if that run is gone, remove the file)" ;;
    *) die "$dir/.lock.excl: ${out:-the lock helper failed (exit $rc)}" ;;
  esac
}

# Drops the lock of recipe_lock (nothing when none is held).
recipe_unlock() {
  case ${recipe_lock_held:-} in
    "") ;;
    flock) exec 9>&- ;;
    *) python "$nest_repo/local/lock_file.py" release "$recipe_lock_held" --pid $$ ;;
  esac
  recipe_lock_held=""
}

# Stage guards
# ------------
#   if stage_begin 3 "training cuts" opt:min_duration=$min_duration in:$manifests out:$data_dir/cuts; then
#     ...
#     stage_end 3
#   fi
#
# stage_begin returns 0 when the stage has to run and 1 when it is outside [--stage, --stop-stage] or
# up to date. Up to date means $done_dir/stageN.done exists and records the same opt: values, the same
# fingerprints of the in: paths, and outputs that are still what the stage wrote. Only options that change
# the outputs belong in opt: (--nj does not). The marker is removed when the stage starts and written by
# stage_end, so a killed stage reruns (and resumes, where the stage itself can).
# With stage_marker_readonly=true (the nodes other than node 0 of a multi-node stage, which share the folder)
# stage_begin decides from the marker without writing it and stage_end writes nothing: node 0 keeps the marker.
# --stage N (given explicitly) forces stage N to run; the stages after it rerun when their inputs changed,
# which they did if stage N wrote different outputs. --force true forces every stage in the range.
# A stage that works item by item (egs/librilight's fine-tuning, one run per split) passes N_ITEM (13_10min) to
# stage_begin and stage_end: each item has its own marker, so adding an item runs only that one.
stage_in_range() {
  [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]
}

stage_begin() {
  local n=$1 desc=$2 a msg rc=0
  local num=${n%%_*}  # N, or N_ITEM: one marker per item of stage N (stage13_10min.done), in range and forced as N
  shift 2
  stage_in_range "$num" || return 1
  local args=()
  for a in "$@"; do
    case "$a" in
      opt:*) args+=(--opt "${a#opt:}") ;;
      in:*) args+=(--in "${a#in:}") ;;
      out:*) args+=(--out "${a#out:}") ;;
      *) die "stage_begin $n: argument '$a' must start with opt:, in: or out:" ;;
    esac
  done
  if [ "${force:-false}" = true ]; then
    args+=(--force "forced by --force true")
  elif [ "$num" -eq "$stage" ] && [[ "${parsed_options:- }" == *" stage "* ]]; then
    args+=(--force "forced by --stage $stage")
  fi
  local cmd=begin
  [ "${stage_marker_readonly:-false}" = true ] && cmd=check
  msg=$(python "$nest_repo/local/stage_marker.py" "$cmd" "${done_dir:?set done_dir before stage_begin}" "$n" \
    "$desc" "${args[@]}") || rc=$?
  stage_why=${msg#run: }  # why the stage runs, for a stage that acts on it (stage 6: new data, new run)
  case $rc in
    0)
      _log_at 0 "Stage $n: $desc (${msg#run: })"
      return 0
      ;;
    1)
      _log_at 0 "Stage $n: $desc: skipped, ${msg#skip: }"
      return 1
      ;;
    *)
      _log_at 0 "ERROR: Stage $n: $desc: ${msg#error: }"
      exit 1
      ;;
  esac
}

stage_end() {
  local msg
  if [ "${stage_marker_readonly:-false}" = true ]; then
    _log_at 0 "Stage $1: done (node 0 writes the marker)"
    return 0
  fi
  msg=$(python "$nest_repo/local/stage_marker.py" end "$done_dir" "$1") || {
    _log_at 0 "ERROR: Stage $1: ${msg#error: }"
    exit 1
  }
  _log_at 0 "Stage $1: done"
}
