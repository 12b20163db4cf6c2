"""`nest-ssl shar export CUTS OUT_DIR --shard-size N`: globally shuffled Lhotse Shar with FLAC audio."""

HELP = "write Lhotse Shar shards (export: global on-disk shuffle, FLAC audio)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="shar_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser(
        "export",
        help="shuffle a manifest globally (on disk, bounded memory) and write it as Lhotse Shar with FLAC audio",
        description="Write CUTS (a Lhotse CutSet/RecordingSet, a NeMo manifest, a Shar directory, or a "
        "comma-separated list) to OUT_DIR as Lhotse Shar: cuts.NNNNNN.jsonl.gz + recording.NNNNNN.tar (FLAC). "
        "The cuts are shuffled globally first with an external shuffle whose temporary files live in "
        "OUT_DIR/.shuffle-tmp. Read the result with train_ds.manifest_filepath=OUT_DIR.",
    )
    p.add_argument("cuts", metavar="CUTS", help="input manifest(s)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="output directory (new or empty)")
    p.add_argument("-s", "--shard-size", type=int, default=1000, help="cuts per shard (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed (default: 0)")
    p.add_argument("-j", "--num-jobs", type=int, default=1, help="parallel encoding processes (default: 1)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the input order")
    p.add_argument(
        "--audio-format", default="flac", choices=["flac", "wav"],
        help="audio codec in the tar files (default: flac). wav costs about 1.5-2x the disk of flac and decodes "
        "several times faster (bench/feed.py); the command prints the disk cost of what it wrote",
    )
    p.add_argument(
        "--max-lines-in-memory",
        type=int,
        default=200_000,
        help="largest chunk of manifest lines shuffled in memory at once (default: 200000)",
    )


def run(args) -> int:
    """User errors (ManifestError: unusable input, a non-empty output folder) propagate to the guard: exit 2."""
    from nest_ssl.prepare.shar import export_shar

    written = export_shar(
        args.cuts,
        args.out_dir,
        shard_size=args.shard_size,
        seed=args.seed,
        num_jobs=args.num_jobs,
        shuffle=not args.no_shuffle,
        audio_format=args.audio_format,
        max_lines_in_memory=args.max_lines_in_memory,
    )
    print(f"wrote {len(written.get('cuts', []))} shards to {args.out_dir}")
    print(disk_cost(written))
    return 0


def disk_cost(written) -> str:
    """The audio tars' size against raw 16-bit PCM of the same samples (the disk cost of --audio-format)."""
    import os

    from lhotse import CutSet

    tar_bytes = sum(os.path.getsize(p) for p in written.get("recording", []))
    pcm_bytes, seconds = 0, 0.0
    for path in written.get("cuts", []):
        for cut in CutSet.from_file(path):
            pcm_bytes += 2 * cut.num_samples * len(cut.channel if isinstance(cut.channel, list) else [cut.channel])
            seconds += cut.duration
    ratio = tar_bytes / pcm_bytes if pcm_bytes else float("nan")
    per_s = tar_bytes / seconds / 1e3 if seconds else float("nan")
    return (f"audio: {tar_bytes / 1e6:.1f} MB for {seconds / 3600:.2f} h ({per_s:.1f} kB per audio second), "
            f"{ratio:.2f} x the size of 16-bit PCM")
