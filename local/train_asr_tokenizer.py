#!/usr/bin/env python3
"""SentencePiece (bpe, unigram) or character tokenizers for `nest-ssl finetune --tokenizer`, one per training set,
trained on that set's transcripts only (a labelled budget's text is all the text its model sees).

    train_asr_tokenizer.py --type bpe --vocab-size 256 [--alphabet "ABC..."] --out DIR/10min=train_10min.json \
        [--out DIR2=MANIFEST ...]

Each DIR gets what `nest-ssl finetune` saves (tokenizer.model, tokenizer.vocab, vocab.txt; characters: vocab.txt),
written to DIR.tmp and renamed, so a killed run leaves no half tokenizer. NeMo's SentencePiece settings
(nest_ssl/asr/tokenizer.py). Transcripts are taken as the manifests hold them (egs/librilight: upper case).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nest_ssl.errors import UserError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--type", default="bpe", choices=("bpe", "unigram", "char"))
    p.add_argument("--vocab-size", type=int, default=256)
    p.add_argument("--alphabet", default="", help="characters every tokenizer holds, seen in training or not "
                   "(egs/librilight: LibriSpeech's A-Z and the apostrophe)")
    p.add_argument("--out", action="append", required=True, metavar="DIR=MANIFEST",
                   help="a tokenizer folder and the NeMo manifest whose transcripts train it; repeatable")
    args = p.parse_args(argv)
    from nest_ssl.asr.manifest import read_nonempty_manifest
    from nest_ssl.asr.tokenizer import train_tokenizer

    jobs = []
    for item in args.out:
        folder, sep, manifest = item.rpartition("=")
        if not sep or not folder:
            raise UserError(f"--out {item}: write DIR=MANIFEST")
        jobs.append((Path(folder), read_nonempty_manifest(manifest, "--out")))
    for folder, utts in jobs:  # every manifest read before anything is written
        try:
            tok = train_tokenizer([u.text for u in utts], args.type, args.vocab_size, args.alphabet)
        except UserError as err:
            raise UserError(f"{folder}: {err}") from None
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tok.save(tmp)
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
        print(f"{folder}: {args.type} tokenizer, {tok.vocab_size} tokens, from {len(utts)} transcripts")
    return 0


if __name__ == "__main__":
    from nest_ssl.cli.guard import run_guarded

    sys.exit(run_guarded(main))
