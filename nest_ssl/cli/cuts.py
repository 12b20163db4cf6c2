"""`nest-ssl cuts windows|estimate-bins ...`: training windows and bucket duration bins."""

import os
import sys

HELP = "cut manipulation (windows: training windows from long recordings; estimate-bins: bucket_duration_bins)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="cuts_command", metavar="ACTION")
    sub.required = True

    w = sub.add_parser(
        "windows",
        help="cut long recordings into training windows between --min-duration and --max-duration seconds",
        description="Cut long recordings into training cuts. Where cuts carry VAD supervisions (LibriLight), "
        "neighbouring segments separated by pauses shorter than --max-pause are merged (up to --max-duration) "
        "and longer spans are split into equal pieces; elsewhere each cut is split into the fewest equal windows "
        "no longer than --max-duration. Windows shorter than --min-duration are dropped. Streams input to output.",
    )
    w.add_argument("input", metavar="IN", help="input manifest(s): Lhotse cuts/recordings, NeMo manifest, Shar dir")
    w.add_argument("output", metavar="OUT.jsonl.gz", help="output CutSet")
    w.add_argument("--min-duration", type=float, default=1.0, help="drop windows shorter than this (default: 1.0)")
    w.add_argument("--max-duration", type=float, default=30.0, help="longest window in seconds (default: 30.0)")
    w.add_argument(
        "--max-pause", type=float, default=1.0, help="merge VAD segments across pauses shorter than this (default: 1.0)"
    )
    w.add_argument("--ignore-supervisions", action="store_true", help="always cut fixed balanced windows")

    b = sub.add_parser(
        "estimate-bins",
        help="estimate bucket_duration_bins for the DynamicBucketingSampler",
        description="Estimate duration bin boundaries that give buckets of roughly equal total duration from a "
        "uniform random sample of --num-cuts cuts of the whole input (one pass over the manifest lines, reservoir "
        "sampling, memory for the sample only; no audio is read), and print them as a config override "
        "(train_ds.bucket_duration_bins=[...]).",
    )
    b.add_argument("input", metavar="CUTS", help="input manifest(s)")
    b.add_argument("-b", "--num-buckets", type=int, default=30, help="number of buckets (default: 30)")
    b.add_argument(
        "-n", "--num-cuts", type=int, default=10000, help="size of the random sample of cuts (default: 10000)"
    )
    b.add_argument("--seed", type=int, default=0, help="seed of the random sample (default: 0)")
    b.add_argument("--min-duration", type=float, default=None, help="ignore cuts shorter than this")
    b.add_argument("--max-duration", type=float, default=None, help="ignore cuts longer than this")
    b.add_argument("--key", default="train_ds", help="config section to print the override for (default: train_ds)")


def _windows(args) -> int:
    from lhotse import CutSet

    from nest_ssl.data.manifests import open_source
    from nest_ssl.prepare.windows import make_training_windows

    from nest_ssl.errors import UserError

    if not (0 < args.min_duration <= args.max_duration):
        raise UserError(f"cuts windows: need 0 < --min-duration <= --max-duration (got {args.min_duration}, "
                        f"{args.max_duration})")
    source = open_source(args.input, what="cuts windows input")
    if source.is_shar:
        # Shar cuts carry their audio in the tar files; windows written to a JSONL manifest could not reach it.
        raise UserError(f"cuts windows: {args.input} is a Shar directory; make windows from the manifest that "
                        "references the audio files, then export the windows with `nest-ssl shar export`")
    windows = make_training_windows(
        CutSet(source),
        args.min_duration,
        args.max_duration,
        args.max_pause,
        use_supervisions=not args.ignore_supervisions,
        what="cuts windows",
    )
    out = args.output
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    suffix = ".jsonl.gz" if out.endswith(".gz") else ".jsonl"
    tmp = os.path.join(os.path.dirname(os.path.abspath(out)), f".{os.path.basename(out)}.partial{suffix}")
    n, total = 0, 0.0
    try:
        with CutSet.open_writer(tmp, overwrite=True) as writer:
            for w in windows:
                writer.write(w)
                n += 1
                total += w.duration
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"wrote {n} windows ({total / 3600:.2f} h) to {out}")
    return 0


def _estimate_bins(args) -> int:
    from nest_ssl.data.manifests import open_source
    from nest_ssl.prepare.bucket_bins import estimate_bucket_bins

    source = open_source(args.input, what="cuts estimate-bins input", metadata_only=True)
    bins = estimate_bucket_bins(
        source,
        args.num_buckets,
        num_cuts=args.num_cuts,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        what="cuts estimate-bins",
        seed=args.seed,
    )
    print(f"{args.key}.bucket_duration_bins=[{','.join(f'{b:g}' for b in bins)}]")
    if len(bins) + 1 < args.num_buckets:
        print(
            f"note: {len(bins) + 1} distinct buckets (asked for {args.num_buckets}): many cuts share a duration",
            file=sys.stderr,
        )
    return 0


def run(args) -> int:
    """User errors (ManifestError and the checks above) propagate to the guard: one line, exit 2."""
    return {"windows": _windows, "estimate-bins": _estimate_bins}[args.cuts_command](args)
