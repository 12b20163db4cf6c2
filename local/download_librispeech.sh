#!/usr/bin/env bash
# Download what egs/librilight's fine-tuning stages (10-14) read, into DIR (never run by the tests).
#
#   local/download_librispeech.sh DIR ITEM...
#
# ITEM (see openslr.org/11, openslr.org/12 and the Libri-light repository for the sizes):
#   dev-clean dev-other test-clean test-other   LibriSpeech parts, openslr 12 -> DIR/LibriSpeech/<part>
#   train-clean-100                             LibriSpeech, openslr 12 (the 100h split) -> DIR/LibriSpeech/
#   librispeech_finetuning                      Libri-light's labelled 10 h -> DIR/librispeech_finetuning/{1h,9h}
#   3-gram.pruned.1e-7.arpa.gz                  openslr 11's pruned 3-gram ARPA (kept compressed: the decoder
#                                               reads .gz) -> DIR/lm/
#   4-gram.arpa.gz                              openslr 11's full 4-gram ARPA -> DIR/lm/
#   librispeech-lm-norm.txt.gz                  openslr 11's LM text (about 800 M words) -> DIR/lm/
#
# Resumable: wget -c continues an interrupted download; an archive is deleted once extracted, so an archive left in
# DIR means an unfinished download or extraction (rerun the same command).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # log, die

usage="Usage: $0 DIR ITEM...   (ITEM: dev-clean dev-other test-clean test-other train-clean-100
  librispeech_finetuning 3-gram.pruned.1e-7.arpa.gz 4-gram.arpa.gz librispeech-lm-norm.txt.gz)"
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  echo "$usage" >&2
  exit 0
fi
[ $# -ge 2 ] || { echo "$0: need DIR and at least one ITEM" >&2; echo "$usage" >&2; exit 2; }
dir=$1
shift
for item in "$@"; do
  case $item in
    dev-clean|dev-other|test-clean|test-other|train-clean-100|librispeech_finetuning) ;;
    3-gram.pruned.1e-7.arpa.gz|4-gram.arpa.gz|librispeech-lm-norm.txt.gz) ;;
    *) echo "$0: unknown item '$item'" >&2; echo "$usage" >&2; exit 2 ;;
  esac
done
command -v wget >/dev/null 2>&1 || die "wget not found; install it, or download by hand (egs/librilight/README.md)"

mkdir -p "$dir"
for item in "$@"; do
  case $item in
    librispeech_finetuning)
      url=https://dl.fbaipublicfiles.com/librilight/data/librispeech_finetuning.tgz ;;
    *.gz)
      url=https://www.openslr.org/resources/11/$item
      mkdir -p "$dir/lm"
      log "Downloading $url into $dir/lm (resumable: wget -c)"
      wget -c -P "$dir/lm" "$url"
      continue ;;
    *)
      url=https://www.openslr.org/resources/12/$item.tar.gz ;;
  esac
  archive=$dir/${url##*/}
  log "Downloading $url into $dir (resumable: wget -c)"
  wget -c -P "$dir" "$url"
  log "Extracting $archive"
  tar -xzf "$archive" -C "$dir"
  rm "$archive"
done
