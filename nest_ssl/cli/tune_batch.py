"""`nest-ssl tune-batch [--config-name NAME] [key=value ...] [--bins 2.5,5,10,20] [--memory-gb 70]`: the largest
batch per duration bucket within a memory budget (nest_ssl/train/tune_batch.py), printed as the config to paste."""

from __future__ import annotations

HELP = ("largest batch per duration bucket within a memory budget (GPU: real steps and a search; CPU: a fitted "
        "memory model); prints model.train_ds.bucket_duration_bins=[...] model.train_ds.bucket_batch_size=[...]")

INTERMIXED = True


def add_arguments(parser) -> None:
    parser.add_argument("--config-path", "-cp", dest="config_path", default=None,
                        help="folder of the yaml configs (default: those shipped in nest_ssl/conf)")
    parser.add_argument("--config-name", "-cn", dest="config_name", default="nest_fast-conformer",
                        help="config name without .yaml (default: nest_fast-conformer)")
    parser.add_argument("--bins", default=None,
                        help="bucket upper durations in seconds, e.g. 2.5,5,10,20 (default: "
                             "model.train_ds.bucket_duration_bins; `nest-ssl cuts estimate-bins` prints them)")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="the budget in GiB (default on a GPU: 90%% of its memory; required on the CPU)")
    parser.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda when there is one)")
    parser.add_argument("--ddp", choices=["auto", "yes", "no"], default="auto",
                        help="count DDP's gradient buckets (default: when trainer.devices x num_nodes > 1)")
    parser.add_argument("--max-probe-seconds", type=float, default=8.0,
                        help="CPU: the longest utterance measured for the memory model (default 8)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for `nest-ssl train`")


def run(args) -> int:
    import logging

    import torch

    from nest_ssl.config import ConfigError, load_config
    from nest_ssl.models import NESTModel
    from nest_ssl.optim import build_optimizer
    from nest_ssl.train.tune_batch import StepRunner, format_config_lines, search_gpu, tune_cpu

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.config_path, args.config_name, args.overrides)
    raw = args.bins if args.bins is not None else cfg.model.train_ds.get("bucket_duration_bins")
    if raw is None:
        raise ConfigError("tune-batch: give --bins 2.5,5,10,20 or model.train_ds.bucket_duration_bins=[...] "
                          "(`nest-ssl cuts estimate-bins` prints them)")
    try:
        bins = [float(x) for x in (raw.replace("[", "").replace("]", "").split(",") if isinstance(raw, str) else raw)]
    except ValueError:
        raise ConfigError(f"tune-batch: --bins {raw!r}: give increasing durations in seconds, "
                          "e.g. 2.5,5,10,20") from None
    if not bins or any(b <= 0 for b in bins) or any(b2 <= b1 for b1, b2 in zip(bins, bins[1:])):
        raise ConfigError(f"tune-batch: bins {bins}: must be positive and strictly increasing")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("tune-batch: --device cuda but torch sees no GPU; use --device cpu")
    t = cfg.trainer
    world = int(t.get("devices", 1) if str(t.get("devices", 1)).isdigit() else 1) * int(t.get("num_nodes", 1))
    ddp = {"yes": True, "no": False}.get(args.ddp, world > 1)
    if args.memory_gb is not None:
        budget = args.memory_gb * 2**30
    elif device.type == "cuda":
        budget = 0.9 * torch.cuda.get_device_properties(device).total_memory
    else:
        raise ConfigError("tune-batch on the CPU needs --memory-gb (the memory each training process may use)")
    precision = str(t.get("precision", "32"))
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    torch.manual_seed(0)
    with torch.device(device):
        model = NESTModel.from_config(cfg.model)
    optimizer = build_optimizer(model.parameters(), cfg.model.optim)
    runner = StepRunner(model, optimizer, sample_rate=int(cfg.model.get("sample_rate", 16000)), autocast_dtype=dtype)
    if device.type == "cuda":
        result = search_gpu(runner, bins, budget, ddp=ddp)
    else:
        result = tune_cpu(runner, bins, budget, ddp=ddp, max_probe_seconds=args.max_probe_seconds)
        m = result.model
        logging.info("memory model: peak = %.1f MB static + %.1f MB + %.3g MB x batch-seconds + %.3g MB x batch-"
                     "seconds x seconds", m.static / 2**20, m.a / 2**20, m.b / 2**20, m.c / 2**20)
    logging.info("tune-batch (%s, %s, budget %.2f GiB%s, precision %s):", result.method, device,
                 budget / 2**30, ", with DDP's gradient buckets" if ddp else "", precision)
    print(format_config_lines(result))
    return 0
