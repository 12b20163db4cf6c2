#!/usr/bin/env bash
# Download LibriLight subsets and extract them into CORPUS_DIR/<subset>/<speaker>/<book>/<file>.flac (+ .json).
#
#   local/download_librilight.sh CORPUS_DIR SUBSET...        # SUBSET: small (35 GB), medium (321 GB), large (3.05 TB)
#
# Resumable: wget -c continues an interrupted download; the tar file is deleted once extracted, so a tar file still
# in CORPUS_DIR means an unfinished download or extraction (egs/librilight stage 0 checks for that).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # log, die

usage="Usage: $0 CORPUS_DIR SUBSET...   (SUBSET: small, medium or large; see egs/librilight/README.md)"
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  echo "$usage" >&2
  exit 0
fi
[ $# -ge 2 ] || { echo "$0: need CORPUS_DIR and at least one SUBSET" >&2; echo "$usage" >&2; exit 2; }
corpus_dir=$1
shift
for s in "$@"; do
  case $s in
    small|medium|large) ;;
    *) echo "$0: unknown subset '$s' (choose from small, medium, large)" >&2; exit 2 ;;
  esac
done
command -v wget >/dev/null 2>&1 || die "wget not found; install it, or download the tar files by hand (egs/librilight/README.md)"

mkdir -p "$corpus_dir"
for s in "$@"; do
  url=https://dl.fbaipublicfiles.com/librilight/data/$s.tar
  log "Downloading $url into $corpus_dir (resumable: wget -c)"
  wget -c -P "$corpus_dir" "$url"
  log "Extracting $corpus_dir/$s.tar"
  tar -xf "$corpus_dir/$s.tar" -C "$corpus_dir"
  rm "$corpus_dir/$s.tar"
done
