"""`nest-ssl manifest from-nemo IN.json OUT.jsonl.gz`: NeMo manifest -> Lhotse CutSet, streaming."""

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
        "its audio file.",
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
    """User errors (ManifestError: a bad line, a missing or unreadable file) propagate to the guard: exit 2."""
    from nest_ssl.data.manifests import convert_nemo_manifest

    n = convert_nemo_manifest(args.input, args.output, duration_tolerance=args.duration_tolerance, what="manifest")
    print(f"wrote {n} cuts to {args.output}")
    return 0
