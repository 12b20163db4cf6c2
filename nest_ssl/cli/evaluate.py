"""`nest-ssl evaluate --model M --train-cuts T --dev-cuts D --test-cuts E --out-dir eval`: downstream evaluation.

SUPERB-style frozen probes (phone, speaker, CTC asr) over a softmax-weighted sum of the encoder's layers and CTC
fine-tuning of the whole encoder, for the model, its architecture randomly initialised (several seeds) and stacked
log-mel features; see docs/evaluation.md. User errors (a missing or unusable file, a CutSet without the labels a
task needs) reach the entry point's guard: one line, exit 2.
"""

from __future__ import annotations

import os
import sys

HELP = "downstream evaluation: phone/speaker/CTC-asr probes and CTC fine-tuning vs random init and fbank baselines"


def add_arguments(parser) -> None:
    from nest_ssl.evaluate.options import TASKS, EvalOptions  # no torch yet: see run()

    d = EvalOptions()
    parser.add_argument("--model", required=True, help="our .ckpt (train / import-nemo) or a .nemo (ours or NeMo's)")
    parser.add_argument("--train-cuts", required=True, help="labelled train CutSet (.jsonl.gz)")
    parser.add_argument("--dev-cuts", required=True, help="labelled dev CutSet: selects the epoch")
    parser.add_argument("--test-cuts", required=True, help="labelled test CutSet: reported")
    parser.add_argument("--out-dir", default="eval", help="writes results.json, layer_weights.{json,png} (default: eval)")
    parser.add_argument("--tasks", default=",".join(d.tasks), help=f"comma-separated subset of {','.join(TASKS)}")
    parser.add_argument("--random-seeds", type=int, default=d.random_seeds,
                        help=f"random_init baselines for the probes (seeds 0..N-1; default {d.random_seeds})")
    parser.add_argument("--finetune-seeds", type=int, default=d.finetune_seeds,
                        help=f"random_init baselines for fine-tuning (default {d.finetune_seeds})")
    parser.add_argument("--seed", type=int, default=d.seed, help="probe seed of pretrained and fbank")
    parser.add_argument("--epochs", type=int, default=d.epochs, help=f"probe epochs (default {d.epochs})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"probe learning rate, Adam (default {d.lr})")
    parser.add_argument("--frame-batch", type=int, default=d.frame_batch, help="phone probe: frames per step")
    parser.add_argument("--batch-size", type=int, default=d.batch_size,
                        help="speaker/asr probes and fine-tuning: utterances per step")
    parser.add_argument("--asr-lstm-hidden", type=int, default=d.asr_lstm_hidden,
                        help="asr probe head: 0 linear (default), N one BiLSTM layer of N units before it")
    parser.add_argument("--ctc-upsample", type=int, default=d.ctc_upsample,
                        help=f"CTC labels per encoder frame (default {d.ctc_upsample}: 40 ms labels at 80 ms frames)")
    parser.add_argument("--steps", "--finetune-steps", dest="finetune_steps", type=int, default=d.finetune_steps,
                        help=f"fine-tuning steps per model (default {d.finetune_steps})")
    parser.add_argument("--finetune-lr", type=float, default=d.finetune_lr, help="fine-tuning peak learning rate")
    parser.add_argument("--no-layer-probes", action="store_true", help="skip the per-layer phone probes")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: OMP_NUM_THREADS, else 2)")


# OpenMP's default wait policy lets idle worker threads spin for a while after every parallel region. The probes
# and the tiny encoders run thousands of small operations; on a CPU that something else keeps busy (2 cores, a
# training run beside it) the spinning workers take the core the main thread needs: with --threads 2 the phone probe
# measured 20-35x slower and fine-tuning 4x slower than with --threads 1, and PASSIVE removed the difference. libgomp
# reads the policy once, when torch loads it, so it is set here before the first `import torch` (a value the user
# exported is kept; a process that already imported torch keeps what it had).
WAIT_POLICY = "PASSIVE"


def _set_wait_policy() -> None:
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", WAIT_POLICY)


def run(args) -> int:
    import logging

    _set_wait_policy()
    import torch

    from nest_ssl.evaluate.errors import EvaluationError
    from nest_ssl.evaluate.run import EvalOptions, evaluate

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threads = args.threads if args.threads is not None else int(os.environ.get("OMP_NUM_THREADS") or 2)
    if threads < 1:
        raise EvaluationError(f"--threads {threads}: must be at least 1")
    torch.set_num_threads(threads)
    opts = EvalOptions(
        tasks=tuple(t.strip() for t in args.tasks.split(",") if t.strip()),
        random_seeds=args.random_seeds, finetune_seeds=args.finetune_seeds, seed=args.seed, epochs=args.epochs,
        lr=args.lr, frame_batch=args.frame_batch, batch_size=args.batch_size, asr_lstm_hidden=args.asr_lstm_hidden,
        ctc_upsample=args.ctc_upsample, finetune_steps=args.finetune_steps, finetune_lr=args.finetune_lr,
        device=args.device, layer_probes=not args.no_layer_probes,
    )
    result = evaluate(args.model, {"train": args.train_cuts, "dev": args.dev_cuts, "test": args.test_cuts},
                      args.out_dir, opts)
    print(result.table)
    if result.layers:
        print()
        print("phone: per-layer linear probe (test frame accuracy)")
        print(result.layers)
    print()
    print(f"wrote {result.out_dir / 'results.json'}"
          + (f" and {result.out_dir / 'layer_weights.png'}" if result.weights else ""))
    return 0
