"""`nest-ssl finetune --train-manifest T --out-dir D [--init-from NEST.ckpt|.nemo] [--head ctc|rnnt] [key=value
...]`: ASR fine-tuning of the Conformer encoder (nest_ssl.asr.finetune; docs/asr.md). Errors: one line, exit 2,
nothing written."""

from __future__ import annotations

HELP = "fine-tune the encoder for ASR with a CTC or RNN-T head (SentencePiece or character tokenizer)"
INTERMIXED = True


def add_arguments(parser) -> None:
    parser.add_argument("--train-manifest", required=True, help="NeMo JSON-lines manifest with audio_filepath, text")
    parser.add_argument("--dev-manifest", help="dev manifest: greedy WER/CER at every checkpoint")
    parser.add_argument("--out-dir", required=True, help="run folder: tokenizer/, step-N.ckpt, log.tsv")
    parser.add_argument("--tokenizer", help="an existing tokenizer folder, or a CTC .nemo whose tokenizer to use (else one is trained from the transcripts)")
    parser.add_argument("--tokenizer-type", default="bpe", choices=("bpe", "unigram", "char"))
    parser.add_argument("--vocab-size", type=int, default=128, help="SentencePiece vocabulary size (default 128)")
    parser.add_argument("--init-from", help="pretrained NEST .ckpt or .nemo (ours or NeMo's), or a CTC .nemo (its head too with its tokenizer); default: random init")
    parser.add_argument("--init-skip", action="append", default=[],
                        help="tolerate a config key (n_layers, d_model, feat_in) or a state-dict key prefix; repeatable")
    parser.add_argument("--config-name", default="nest_tiny", help="model config without --init-from (default nest_tiny)")
    parser.add_argument("--spec-augment", action="append", default=[],
                        help="NeMo SpecAugment key=value (freq_masks, time_masks, freq_width, time_width); repeatable")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save-every", type=int, default=50)
    parser.add_argument("--freeze-encoder-steps", type=int, default=0, help="frozen-encoder warm-up steps")
    parser.add_argument("--head", default="ctc", choices=("ctc", "rnnt"),
                        help="CTC (NeMo's ConvASRDecoder) or RNN-T (NeMo's RNNTDecoder + RNNTJoint); default ctc")
    parser.add_argument("overrides", nargs="*", help="model config overrides, e.g. encoder.n_layers=4; with --head "
                        "rnnt also NeMo's RNN-T keys, e.g. model_defaults.pred_hidden=320")


def run(args) -> int:
    from pathlib import Path

    from nest_ssl.asr.errors import ASRError
    from nest_ssl.asr.finetune import FinetuneOptions, finetune
    from nest_ssl.config import parse_value

    spec = {}
    for item in args.spec_augment:
        key, sep, value = item.partition("=")
        if not sep:
            raise ASRError(f"--spec-augment {item}: write key=value, e.g. time_masks=10")
        spec[key] = parse_value(value)
    opts = FinetuneOptions(
        train_manifest=Path(args.train_manifest), out_dir=Path(args.out_dir),
        dev_manifest=Path(args.dev_manifest) if args.dev_manifest else None,
        tokenizer_dir=Path(args.tokenizer) if args.tokenizer else None, tokenizer_type=args.tokenizer_type,
        vocab_size=args.vocab_size, init_from=Path(args.init_from) if args.init_from else None,
        init_skip=list(args.init_skip), config_name=args.config_name, overrides=list(args.overrides),
        spec_augment=spec, steps=args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
        save_every=args.save_every, freeze_encoder_steps=args.freeze_encoder_steps, head=args.head)
    finetune(opts, say=lambda line: print(line, flush=True))
    return 0
