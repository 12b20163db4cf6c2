"""`nest-ssl noise bank NOISE_MANIFEST OUT_DIR`: the noise set as one memory-mapped PCM bank."""

HELP = "noise sets (bank: decode a noise manifest once into one memory-mapped PCM file that workers share)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="noise_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser(
        "bank",
        help="decode a noise manifest once into OUT_DIR/noise_bank.pcm (int16) + noise_bank.json",
        description="Decode every entry of NOISE_MANIFEST (lhotse cuts, NeMo JSON, Shar, or a comma-separated list; "
        "e.g. the noise_cuts.jsonl.gz of `nest-ssl prepare noise`) at --sample-rate, mono, into one raw int16 file "
        "OUT_DIR/noise_bank.pcm with its index OUT_DIR/noise_bank.json. Point train_ds.noise_manifest at OUT_DIR: "
        "noise is then sliced from a memory map shared by all workers and ranks instead of decoded per utterance. "
        "Unreadable entries are listed in OUT_DIR/rejects_noise_bank.tsv; a killed build resumes when rerun.",
    )
    p.add_argument("noise_manifest", metavar="NOISE_MANIFEST")
    p.add_argument("out_dir", metavar="OUT_DIR")
    p.add_argument("--sample-rate", type=int, default=16000, help="the model's sample rate (default: 16000)")


def run(args) -> int:
    """User errors (no manifest, an existing bank, nothing readable) reach the guard: one line, exit 2."""
    import logging

    from nest_ssl.data.noise_bank import build_noise_bank
    from nest_ssl.errors import UserError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.sample_rate < 1:
        raise UserError(f"--sample-rate must be a positive number of Hz, got {args.sample_rate}")
    stats = build_noise_bank(args.noise_manifest, args.out_dir, sample_rate=args.sample_rate)
    resumed = f", {stats.resumed_from} of them from an interrupted build" if stats.resumed_from else ""
    print(f"noise bank {args.out_dir}: {stats.entries} entries{resumed}, {stats.samples / args.sample_rate:.1f} s, "
          f"{stats.bytes / 1e6:.1f} MB int16; {stats.rejected} rejected"
          + (f" (listed in {args.out_dir}/rejects_noise_bank.tsv)" if stats.rejected else ""))
    return 0
