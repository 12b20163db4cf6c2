#!/usr/bin/env python3
"""The language side of a fine-tuning recipe, made once and shared by every run of its grid:

  asr_lang.py tokenizer MANIFEST OUT_DIR [--tokenizer-type bpe --vocab-size 256] [--extra-text FILE]
      a tokenizer trained on the manifest's transcripts (nest_ssl.asr.tokenizer, NeMo's settings), saved as
      `nest-ssl finetune --tokenizer OUT_DIR` reads it; --extra-text adds the lines of a text file (tiny training
      sets miss letters that dev and test have: the tokenizer must spell every transcript);
  asr_lang.py lm TEXT OUT.arpa [--order 3]
      our interpolated Kneser-Ney word n-gram (nest_ssl.asr.lm) from a text file, one sentence a line.

Both write to a temporary name and rename, so a killed run leaves nothing half written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("manifest")
    t.add_argument("out_dir")
    t.add_argument("--tokenizer-type", default="bpe", choices=["bpe", "unigram", "char"])
    t.add_argument("--vocab-size", type=int, default=256)
    t.add_argument("--extra-text", default=None, help="also train on this text file's lines")
    m = sub.add_parser("lm")
    m.add_argument("text")
    m.add_argument("out")
    m.add_argument("--order", type=int, default=3)
    a = p.parse_args(argv)
    if a.what == "tokenizer":
        from nest_ssl.asr.errors import ASRError
        from nest_ssl.asr.manifest import read_nonempty_manifest
        from nest_ssl.asr.tokenizer import save_tokenizer, train_tokenizer

        texts = [u.text for u in read_nonempty_manifest(a.manifest, "manifest")]
        if a.extra_text:
            if not Path(a.extra_text).is_file():
                raise ASRError(f"--extra-text {a.extra_text}: does not exist; give a text file")
            texts += [" ".join(line.split()) for line in Path(a.extra_text).read_text(encoding="utf-8").splitlines()]
        tok = train_tokenizer(texts, a.tokenizer_type, a.vocab_size)
        out, tmp = Path(a.out_dir), Path(a.out_dir + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_tokenizer(tok, tmp)
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        print(f"{a.tokenizer_type} tokenizer of {tok.vocab_size} tokens from {len(texts)} lines ({a.manifest}"
              f"{' and ' + a.extra_text if a.extra_text else ''}) in {out}")
    else:
        from nest_ssl.asr.lm import build_arpa

        if a.order < 1:
            p.error("--order must be >= 1")
        tmp = Path(a.out + ".tmp")
        build_arpa(a.text, tmp, a.order)
        tmp.replace(a.out)
        print(f"{a.order}-gram LM of {a.text} in {a.out}")
    return 0


if __name__ == "__main__":
    from nest_ssl.cli.guard import run_guarded  # user errors (a bad manifest, a missing file): one line, exit 2

    sys.exit(run_guarded(main))
