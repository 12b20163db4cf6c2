#!/usr/bin/env bash
# Download MUSAN (11 GB, 109 h: music, speech, noise) through lhotse and extract it to TARGET_DIR/musan.
#
#   local/download_musan.sh TARGET_DIR
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"   # log, die, python with lhotse

usage="Usage: $0 TARGET_DIR   (writes TARGET_DIR/musan/{music,noise,speech}; https://www.openslr.org/17)"
if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  echo "$usage" >&2
  exit 0
fi
[ $# -eq 1 ] || { echo "$0: need exactly one TARGET_DIR" >&2; echo "$usage" >&2; exit 2; }

mkdir -p "$1"
log "Downloading MUSAN into $1 (lhotse.recipes.musan.download_musan)"
python -c 'import sys; from lhotse.recipes.musan import download_musan; download_musan(sys.argv[1])' "$1"
[ -d "$1/musan" ] || die "MUSAN was not extracted to $1/musan"
