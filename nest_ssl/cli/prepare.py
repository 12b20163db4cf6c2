"""`nest-ssl prepare librilight|noise ...`: corpus preparation (LibriLight manifests, noise windows)."""


HELP = "prepare corpora (librilight: streaming, resumable LibriLight manifests; noise: a noise set cut into windows)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="prepare_command", metavar="CORPUS")
    sub.required = True

    p = sub.add_parser(
        "librilight",
        help="LibriLight recordings/supervisions/cuts manifests, one supervision per VAD interval",
        description="Write OUT_DIR/librilight_{recordings,supervisions,cuts}_<subset>.jsonl.gz and "
        "rejects_<subset>.tsv for each subset of CORPUS_DIR (which holds small/ medium/ large/ with "
        "<speaker>/<book>/<file>.flac and a .json beside each). Recording ids are <subset>/<speaker>/<book>/<file> "
        "as in lhotse and Libriheavy; speaker, SNR and book metadata are kept on the supervisions. Streams "
        "(memory does not grow with the corpus), runs in --num-jobs processes, resumes where a killed run stopped, "
        "and lists every bad file with the reason in the rejects file instead of stopping.",
    )
    p.add_argument("corpus_dir", metavar="CORPUS_DIR")
    p.add_argument("output_dir", metavar="OUT_DIR")
    p.add_argument("--subsets", default="small,medium,large", help="comma-separated (default: small,medium,large)")
    p.add_argument("-j", "--num-jobs", type=int, default=1, help="worker processes (default: 1)")
    p.add_argument("--chunk-size", type=int, default=64, help="files per unit of work and of resumption (default: 64)")
    p.add_argument(
        "--check-audio",
        choices=["header", "tail", "full"],
        default="tail",
        help="header: read the header only (as lhotse); tail: also decode the last samples, which catches truncated "
        "files cheaply (default); full: decode everything",
    )
    p.add_argument("--overwrite", action="store_true", help="redo subsets that are already prepared")

    n = sub.add_parser(
        "noise",
        help="a noise set (MUSAN layout, any folder of audio, or a manifest) cut into windows",
        description="Write OUT_DIR/noise_cuts.jsonl.gz (windows no longer than --window seconds, for "
        "train_ds.noise_manifest), noise_recordings.jsonl.gz and rejects_noise.tsv. SOURCE is a MUSAN folder "
        "(only --parts are used), any folder of audio files, or a manifest (lhotse cuts/recordings, NeMo).",
    )
    n.add_argument("source", metavar="SOURCE")
    n.add_argument("output_dir", metavar="OUT_DIR")
    n.add_argument(
        "--parts",
        default="noise,music",
        help="MUSAN parts to use (default: noise,music; MUSAN's speech is LibriVox, LibriLight's own domain)",
    )
    n.add_argument("--window", type=float, default=10.0, help="longest window in seconds (default: 10)")
    n.add_argument("--min-duration", type=float, default=1.0, help="drop files shorter than this (default: 1)")


def _subsets(value: str):
    from nest_ssl.prepare.librilight import LIBRILIGHT_SUBSETS

    subsets = [s.strip() for s in value.split(",") if s.strip()]
    bad = [s for s in subsets if s not in LIBRILIGHT_SUBSETS]
    if not subsets or bad:
        raise ValueError(f"--subsets takes a comma-separated list of {','.join(LIBRILIGHT_SUBSETS)}; got {value!r}")
    return subsets


def run(args) -> int:
    """User errors (a missing corpus or noise folder, bad options) propagate to the guard: one line, exit 2."""
    import logging

    from nest_ssl.cli.guard import as_user_errors

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.prepare_command == "librilight":
        from nest_ssl.prepare.librilight import prepare_librilight

        with as_user_errors(FileNotFoundError, ValueError):
            stats = prepare_librilight(
                args.corpus_dir,
                args.output_dir,
                subsets=_subsets(args.subsets),
                num_jobs=args.num_jobs,
                chunk_size=args.chunk_size,
                check_audio=args.check_audio,
                overwrite=args.overwrite,
            )
        for s in stats.values():
            state = "already prepared" if s.up_to_date else "prepared"
            print(
                f"{s.subset}: {state}: {s.recordings} recordings ({s.audio_seconds / 3600:.2f} h), "
                f"{s.supervisions} VAD segments ({s.speech_seconds / 3600:.2f} h); {s.rejected} of {s.files} files "
                f"rejected, {s.noted} kept with notes (rejects_{s.subset}.tsv)"
            )
        return 0

    from nest_ssl.prepare.noise import prepare_noise

    with as_user_errors(FileNotFoundError, ValueError):
        s = prepare_noise(
            args.source,
            args.output_dir,
            parts=[p.strip() for p in args.parts.split(",") if p.strip()],
            window=args.window,
            min_duration=args.min_duration,
        )
    print(
        f"noise ({s.layout}): {s.windows} windows ({s.seconds / 3600:.2f} h) from {s.recordings} of {s.files} files; "
        f"{s.rejected} rejected (rejects_noise.tsv)"
    )
    return 0
