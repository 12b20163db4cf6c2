"""`nest-ssl manifest from-nemo IN.json OUT.jsonl.gz`: NeMo manifest -> Lhotse CutSet, streaming."""

import sys

HELP = "convert manifests (from-nemo: NeMo JSON lines -> Lhotse CutSet)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="manifest_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser(
        "from-nemo",
        help="convert a NeMo JSON-lines manifest to a Lhotse CutSet (.jsonl.gz), reading each audio header once",
        description="Convert a NeMo JSON-lines manifest (audio_filepath, duration, optional offset; other keys are "
        "kept in cut.custom; relative paths are resolved against the manifest's folder) to a Lhotse CutSet. "
        "Streams line by line; a missing duration is read from the file header; every line is checked against "
        "its audio file. Lines that fail are left out and listed with the reason in rejects_<OUT name>.tsv next "
        "to OUT.",
    )
    p.add_argument("input", metavar="IN.json", help="NeMo manifest")
    p.add_argument("output", metavar="OUT.jsonl.gz", help="Lhotse CutSet to write (.jsonl or .jsonl.gz)")
    p.add_argument(
        "--duration-tolerance",
        type=float,
        default=0.1,
        help="allowed disagreement in seconds between a line's duration and its audio file (default: 0.1)",
    )


def run(args) -> int:
    """User errors (unreadable input, OUT = IN, no line left) propagate to the CLI's guard: one line, exit 2."""
    from nest_ssl.prepare.nemo_manifest import convert_nemo_manifest

    done = convert_nemo_manifest(args.input, args.output, duration_tolerance=args.duration_tolerance)
    print(f"wrote {done.written} cuts to {args.output}")
    if done.rejected:
        print(f"nest-ssl: warning: {done.rejected} of {done.written + done.rejected} lines of {args.input} were "
              f"left out; each is listed with its reason in {done.rejects_path}", file=sys.stderr)
    return 0
