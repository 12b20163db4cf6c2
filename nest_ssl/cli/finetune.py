"""`nest-ssl finetune --train-manifest T --out-dir D [--init-from NEST.ckpt|.nemo] [key=value ...]`: ASR fine-tuning
of the Conformer encoder (nest_ssl.asr.finetune; docs/asr.md). `--config-name fast-conformer_ctc_bpe` reads NeMo's
fine-tuning keys; flags given override the yaml, `key=value` overrides everything. Errors: one line, exit 2, nothing
written; a run stopped by SIGTERM/SIGUSR1 exits 75 after its checkpoint (the same command continues it)."""

from __future__ import annotations

HELP = "fine-tune the encoder for ASR with a CTC or RNN-T head (SentencePiece or character tokenizer)"
INTERMIXED = True


def add_arguments(parser) -> None:
    parser.add_argument("--train-manifest", help="NeMo JSON-lines manifest with audio_filepath, duration, text")
    parser.add_argument("--train-cuts", help="Lhotse CutSet (.jsonl.gz) whose supervisions hold the text")
    parser.add_argument("--dev-manifest", help="dev manifest: greedy WER/CER at every validation")
    parser.add_argument("--dev-cuts", help="dev Lhotse CutSet (.jsonl.gz) with supervision text")
    parser.add_argument("--out-dir", help="run folder: tokenizer/, step-N.ckpt, best.ckpt, log.tsv, metrics.jsonl")
    parser.add_argument("--tokenizer", help="an existing tokenizer folder, or a CTC / RNN-T .nemo whose tokenizer to "
                        "use (else one is trained from the transcripts)")
    parser.add_argument("--tokenizer-type", choices=("bpe", "unigram", "char"), help="default bpe")
    parser.add_argument("--vocab-size", type=int, help="SentencePiece vocabulary size (default 128)")
    parser.add_argument("--init-from", help="pretrained NEST .ckpt or .nemo (ours or NeMo's), or a CTC / RNN-T .nemo "
                        "(its head too with its tokenizer and a head of its kind); default: random init")
    parser.add_argument("--init-skip", action="append", default=[],
                        help="tolerate a config key (n_layers, d_model, feat_in) or a state-dict key prefix; repeatable")
    parser.add_argument("--config-path", help="folder of --config-name (default: the package's nest_ssl/conf)")
    parser.add_argument("--config-name",
                        help="a NEST config for the encoder without --init-from (default nest_tiny), or an ASR "
                             "fine-tuning yaml (fast-conformer_ctc_bpe: NeMo's keys)")
    parser.add_argument("--spec-augment", action="append", default=[],
                        help="NeMo SpecAugment key=value (freq_masks, time_masks, freq_width, time_width); repeatable")
    parser.add_argument("--head", choices=("ctc", "rnnt"),
                        help="CTC (NeMo's ConvASRDecoder; default) or RNN-T (NeMo's RNNTDecoder + RNNTJoint)")
    parser.add_argument("--steps", type=int, help="trainer.max_steps (default 200)")
    parser.add_argument("--lr", type=float, help="model.optim.lr (default 1e-3)")
    parser.add_argument("--batch-size", type=int, help="utterances per batch (default 8)")
    parser.add_argument("--max-duration", type=float,
                        help="seconds of audio per batch: Lhotse's DynamicBucketingSampler (bucketing on)")
    parser.add_argument("--num-workers", type=int, help="DataLoader workers (default 0)")
    parser.add_argument("--precision", help="32 (default), bf16-mixed or 16-mixed (GPU)")
    parser.add_argument("--devices", type=int,
                        help="processes per node (DDP; gloo on the CPU), started here or by torchrun/srun; default 1")
    parser.add_argument("--num-nodes", type=int,
                        help="nodes (trainer.num_nodes), each starting its processes with torchrun or srun; default 1")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--save-every", type=int, help="step-N.ckpt every N steps (default 50)")
    parser.add_argument("--val-every", type=int, help="dev WER every N steps (default: --save-every)")
    parser.add_argument("--freeze-encoder-steps", type=int, help="frozen-encoder warm-up steps")
    parser.add_argument("overrides", nargs="*",
                        help="config overrides: encoder.n_layers=4 (model section), trainer.max_steps=..., with --head rnnt "
                             "also NeMo's RNN-T keys (model_defaults.pred_hidden=320, joint.jointnet.dropout=0.1)")


def run(args) -> int:
    from nest_ssl.asr.errors import ASRError
    from nest_ssl.asr.finetune import finetune
    from nest_ssl.asr.ft_config import FLAG_KEYS, build_config
    from nest_ssl.config import parse_value
    from nest_ssl.train.run_status import exit_code_for

    spec = {}
    for item in args.spec_augment:
        key, sep, value = item.partition("=")
        if not sep:
            raise ASRError(f"--spec-augment {item}: write key=value, e.g. time_masks=10")
        spec[key] = parse_value(value)
    flags = {dest: getattr(args, dest) for dest in FLAG_KEYS}
    flags.update(init_skip=list(args.init_skip), spec_augment=spec, max_duration=args.max_duration)
    cfg, nest_overrides = build_config(config_name=args.config_name, config_path=args.config_path, flags=flags,
                                       overrides=list(args.overrides))
    result = finetune(cfg, nest_overrides, say=lambda line: print(line, flush=True))
    return exit_code_for(result.stop_reason)
