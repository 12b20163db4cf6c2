"""`nest-ssl transcribe MODEL AUDIO... [--lm ARPA]`: one line per file on stdout, the path, a tab, the text."""

from __future__ import annotations

HELP = "transcribe audio files with a fine-tuned CTC model (greedy, or beam search with an n-gram LM)"


def add_arguments(parser) -> None:
    from nest_ssl.cli.decode import add_lm_arguments

    parser.add_argument("model", help="a step-N.ckpt of `nest-ssl finetune`, its --out-dir, or a NeMo CTC .nemo")
    parser.add_argument("audio", nargs="+", help="audio files (any rate soundfile reads; resampled)")
    parser.add_argument("--avg", type=int, default=1)
    parser.add_argument("--tokenizer", help="tokenizer folder or .nemo (default: the run's tokenizer/, a .nemo's own)")
    add_lm_arguments(parser)


def run(args) -> int:
    from pathlib import Path

    from nest_ssl.asr.audio import check_audio
    from nest_ssl.asr.errors import ASRError
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.asr.transcribe import transcribe
    from nest_ssl.cli.decode import lm_decoder

    paths = [Path(p) for p in args.audio]
    for p in paths:
        if not p.is_file():
            raise ASRError(f"{p}: does not exist; give audio files")
    check_audio((p, "") for p in paths)
    model, tok, _ = load_asr(args.model, args.avg, args.tokenizer)
    lm = lm_decoder(args, tok)
    res = transcribe(model, tok, paths, lm)
    for p, text in zip(paths, res.texts):
        print(f"{p}\t{text}")
    return 0
