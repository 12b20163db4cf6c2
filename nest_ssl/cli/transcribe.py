"""`nest-ssl transcribe MODEL AUDIO... [--lm ARPA]`: one line per file on stdout, the path, a tab, the text.
CTC: greedy, or with the LM; RNN-T: greedy, or beam search with --rnnt-beam-size N."""

from __future__ import annotations

HELP = "transcribe audio files with a fine-tuned model (CTC: greedy or n-gram LM beam search; RNN-T: greedy or beam)"


def add_arguments(parser) -> None:
    from nest_ssl.cli.decode import add_lm_arguments, add_rnnt_arguments

    parser.add_argument("model",
                        help="a step-N.ckpt of `nest-ssl finetune`, its --out-dir, or a NeMo CTC / RNN-T .nemo")
    parser.add_argument("audio", nargs="+", help="audio files (any rate soundfile reads; resampled)")
    parser.add_argument("--avg", type=int, default=1)
    parser.add_argument("--tokenizer", help="tokenizer folder or .nemo (default: the run's tokenizer/, a .nemo's own)")
    add_lm_arguments(parser)
    add_rnnt_arguments(parser)


def run(args) -> int:
    from pathlib import Path

    from nest_ssl.asr.audio import check_audio
    from nest_ssl.asr.errors import ASRError
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.asr.transcribe import transcribe
    from nest_ssl.asr.heads import head_of
    from nest_ssl.cli.decode import lm_decoder, rnnt_methods

    paths = [Path(p) for p in args.audio]
    for p in paths:
        if not p.is_file():
            raise ASRError(f"{p}: does not exist; give audio files")
    check_audio((p, "") for p in paths)
    model, tok, _ = load_asr(args.model, args.avg, args.tokenizer)
    if head_of(model.cfg) == "rnnt":  # greedy, or beam search when a width is given
        lm = rnnt_methods(args, model, beam=args.rnnt_beam_size is not None)[-1][1]
    else:
        lm = lm_decoder(args, tok)
    res = transcribe(model, tok, paths, lm)
    for p, text in zip(paths, res.texts):
        print(f"{p}\t{text}")
    return 0
