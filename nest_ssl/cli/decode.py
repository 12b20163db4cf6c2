"""`nest-ssl decode --model RUN_DIR|step-N.ckpt [--avg N] --test NAME=MANIFEST ... --out-dir D [--lm ARPA |
--lm-text TXT]`: icefall-style recogs-/errs-/wer-summary- files per test set and method (CTC: greedy, and lm;
RNN-T: greedy and beam; the head is the model's)."""

from __future__ import annotations

HELP = "decode test sets with a fine-tuned model (CTC: greedy, LM beam search; RNN-T: greedy, beam), WER/CER, RTF"


def add_lm_arguments(parser) -> None:
    parser.add_argument("--lm", help="word n-gram LM in ARPA format (ours or any)")
    parser.add_argument("--lm-text", help="text file (a sentence a line): estimate a Kneser-Ney LM from it")
    parser.add_argument("--lm-order", type=int, default=3)
    parser.add_argument("--lm-weight", type=float, default=1.0)
    parser.add_argument("--word-score", type=float, default=0.0)
    parser.add_argument("--beam-size", type=int, default=50, help="the CTC LM beam (default 50)")


def add_rnnt_arguments(parser) -> None:
    parser.add_argument("--rnnt-beam-size", type=int,
                        help="RNN-T beam search width (default: the model's decoding.beam.beam_size, NeMo's 2)")
    parser.add_argument("--max-symbols", type=int,
                        help="RNN-T greedy: tokens per frame at most (default: decoding.greedy.max_symbols, 10)")


def rnnt_methods(args, model, beam: bool) -> list:
    """[(name, RNNTSearch)] for an RNN-T model: greedy, and beam when asked; the LM options are refused."""
    from dataclasses import replace

    from nest_ssl.asr.errors import ASRError

    if args.lm or args.lm_text:
        raise ASRError(f"--{'lm' if args.lm else 'lm-text'}: LM decoding is for CTC models; this RNN-T model decodes "
                       "greedy and with beam search (--rnnt-beam-size)")
    for opt, value in (("--rnnt-beam-size", args.rnnt_beam_size), ("--max-symbols", args.max_symbols)):
        if value is not None and value < 1:
            raise ASRError(f"{opt} {value}: give a positive number")
    greedy = model.default_search()
    if args.max_symbols is not None:
        greedy = replace(greedy, max_symbols=args.max_symbols)
    out = [("greedy", greedy)]
    if beam:
        out.append(("beam", replace(greedy, beam_size=args.rnnt_beam_size or model.default_search(True).beam_size)))
    return out


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True,
                        help="a step-N.ckpt of `nest-ssl finetune`, its --out-dir, or a NeMo CTC / RNN-T .nemo")
    parser.add_argument("--avg", type=int, default=1, help="average the last N checkpoints (icefall's --avg)")
    parser.add_argument("--tokenizer", help="tokenizer folder or .nemo (default: the run's tokenizer/, a .nemo's own)")
    parser.add_argument("--test", action="append", required=True, metavar="NAME=MANIFEST", help="repeatable")
    parser.add_argument("--out-dir", required=True)
    add_lm_arguments(parser)
    add_rnnt_arguments(parser)


def lm_decoder(args, tok, out_dir=None):
    """The LMDecoder the options ask for (None: greedy only); an --lm-text LM is written to out_dir, or to a
    temporary folder removed once KenLM has read it."""
    import tempfile
    from pathlib import Path

    from nest_ssl.asr.decode import LMDecoder, LMOptions
    from nest_ssl.asr.errors import ASRError
    from nest_ssl.asr.lm import estimate, write_arpa

    if args.lm and args.lm_text:
        raise ASRError("give --lm or --lm-text, not both")
    arpa = Path(args.lm) if args.lm else None
    if args.lm_text:
        text = Path(args.lm_text)
        if not text.is_file():
            raise ASRError(f"--lm-text {text}: does not exist; give a text file, one sentence per line")
        model = estimate(text.read_text(encoding="utf-8").splitlines(), args.lm_order)
        if out_dir is None:
            with tempfile.TemporaryDirectory(prefix="nest_ssl_lm_") as tmp:
                arpa = write_arpa(model, Path(tmp) / "lm.arpa")
                return LMDecoder(tok, LMOptions(arpa, args.lm_weight, args.word_score, args.beam_size))
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        arpa = write_arpa(model, Path(out_dir) / f"lm-{args.lm_order}gram.arpa")
    if arpa is None:
        return None
    return LMDecoder(tok, LMOptions(arpa, args.lm_weight, args.word_score, args.beam_size))


def run(args) -> int:
    from pathlib import Path

    from nest_ssl.asr.audio import check_audio
    from nest_ssl.asr.errors import ASRError
    from nest_ssl.asr.manifest import read_nonempty_manifest
    from nest_ssl.asr.model_io import load_asr
    from nest_ssl.asr.heads import head_of
    from nest_ssl.asr.results import write_results
    from nest_ssl.asr.transcribe import transcribe

    tests = {}
    for item in args.test:
        name, sep, manifest = item.partition("=")
        if not sep or not name:
            raise ASRError(f"--test {item}: write NAME=MANIFEST, e.g. test-clean=data/test.json")
        tests[name] = read_nonempty_manifest(manifest, f"--test {name}")
    model, tok, paths = load_asr(args.model, args.avg, args.tokenizer)
    rnnt = rnnt_methods(args, model, beam=True) if head_of(model.cfg) == "rnnt" else None
    for name, utts in tests.items():  # every transcript checked before any output
        for u in utts:
            tok.encode(u.text, u.where)
        check_audio((u.audio, u.where) for u in utts)
    if args.lm and not Path(args.lm).is_file():
        raise ASRError(f"--lm {args.lm}: does not exist; give an ARPA file (or --lm-text)")
    out = Path(args.out_dir)
    lm = lm_decoder(args, tok, out) if rnnt is None else None
    methods = rnnt if rnnt is not None else [("greedy", None)] + ([("lm", lm)] if lm is not None else [])
    print(f"model: {', '.join(map(str, paths))}" + (f" (averaged {len(paths)})" if len(paths) > 1 else ""))
    for name, utts in tests.items():
        ids = [u.audio.stem for u in utts]
        refs = [u.text for u in utts]
        for method, dec in methods:
            res = transcribe(model, tok, [u.audio for u in utts], dec)
            w, c = write_results(out, name, method, ids, refs, res.texts, res.rtf)
            print(f"{name}\t{method}\tWER {100 * w.rate:.2f}\tCER {100 * c.rate:.2f}\tRTF {res.rtf:.4f}")
    return 0
