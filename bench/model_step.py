#!/usr/bin/env python
"""Seconds per NEST training step (forward with masking, loss, backward) of the 17-layer model, ours against NeMo.

The optimizer update is left out of the step, as the issue defines it: it is torch's AdamW in both.

    .venv/bin/python bench/model_step.py [--threads 2] [--steps 4] [--warmup 2] [--repeats 5] [--with-compile]

CPU, 2 threads, a batch of 2 x 8 s (real LibriSpeech speech from ../shared/fixtures when present, else synthetic),
median step time after warm-up and the process's peak memory. Each measurement runs in its own process so peaks
do not mix; ours and NeMo's alternate (`--repeats` rounds) so that the machine's load affects both alike. NeMo runs
where `.venv-nemo` (make parity) has it; the ratio ours / NeMo is printed (target <= 0.75). `--with-compile` adds
ours under torch.compile (nest_trainer.compile; its warm-up steps compile) and prints compiled / eager and
compiled / NeMo. On a GPU it also times
fp32 and bf16 and prints the model FLOPs utilisation.

    .venv/bin/python bench/model_step.py --checkpointing-memory [--layers 17] [--batch-size 2] [--seconds 8]

Peak memory of our step with and without activation checkpointing (model.encoder.activation_checkpointing), each
in its own process. On CPU the figure to read is allocator-level: one more step under torch's profiler with
profile_memory=True, whose CPU allocator reports the running total of bytes allocated and not yet freed during the
step; its maximum is the step's peak of live tensors (activations, gradients, temporaries) above what existed
before it, and its value where the forward ends is what the forward keeps for the backward. The growth of the
resident set is printed too but can hide the difference: glibc serves blocks under its mmap threshold from a heap
whose high-water mark it keeps. On a GPU: max_memory_allocated. `--layers`, `--batch-size`, `--seconds` shrink
the measurement for small machines.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "fixtures" / "real_audio"
NEMO_PY = ROOT / ".venv-nemo" / "bin" / "python"

# Dense peak FLOP/s by GPU name, for the utilisation figure: fp32 without tensor cores (torch's default for
# matmuls), tf32 (cuDNN convolutions use it by default), bf16 with tensor cores.
PEAK_FLOPS = {"H100": {"fp32": 67e12, "tf32": 494e12, "bf16": 989e12},
              "H200": {"fp32": 67e12, "tf32": 494e12, "bf16": 989e12},
              "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12}}


def make_batch(batch_size=2, seconds=8.0):
    import torch

    n = int(seconds * 16000)
    clips = []
    for path in sorted(REAL.glob("2412-*.flac"))[:batch_size]:
        import soundfile as sf

        x, sr = sf.read(path, dtype="float32")
        if sr == 16000 and len(x) >= n:
            clips.append(torch.from_numpy(x[:n]))
    g = torch.Generator().manual_seed(0)
    while len(clips) < batch_size:
        t = torch.arange(n) / 16000
        clips.append(0.3 * torch.sin(2 * torch.pi * 180 * t) * torch.rand(1, generator=g) + 0.05 * torch.randn(n, generator=g))
    audio = torch.stack(clips)
    noisy = audio + 0.05 * torch.randn(audio.shape, generator=g)
    lengths = torch.full((batch_size,), n, dtype=torch.int64)
    return audio, lengths, noisy


def build(impl, layers=None, checkpointing=False):
    from omegaconf import OmegaConf

    sys.path.insert(0, str(ROOT))
    from nest_ssl.config import NEMO_TARGETS, load_config

    overrides = ["model.train_ds.manifest_filepath=null", "model.validation_ds.manifest_filepath=null"]
    if layers:
        overrides.append(f"model.encoder.n_layers={layers}")
    if checkpointing:
        overrides.append("+model.encoder.activation_checkpointing=true")
    cfg = load_config(overrides=overrides)
    if impl in ("ours", "compiled"):
        from nest_ssl.models import NESTModel

        model = NESTModel.from_config(cfg.model)
        if impl == "compiled":  # the trainer's nest_trainer.compile.enabled=true (warm-up steps compile)
            from nest_ssl.train.compile import CompileSettings, compile_encoder

            compile_encoder(model, CompileSettings(enabled=True))
        return model
    from nemo.collections.asr.models import EncDecDenoiseMaskedTokenPredModel

    text = OmegaConf.to_yaml(cfg.model)
    for nemo_path, ours in NEMO_TARGETS.items():
        text = text.replace(f"_target_: {ours}\n", f"_target_: {nemo_path}\n")
    model_cfg = OmegaConf.create(text)
    del model_cfg["train_ds"], model_cfg["validation_ds"]
    return EncDecDenoiseMaskedTokenPredModel(cfg=model_cfg, trainer=None)


def make_step(impl, model, device, precision, batch_size=2, seconds=8.0):
    """One training step as each toolkit's trainer runs it: forward with masking, loss, backward."""
    import torch

    audio, lengths, noisy = (t.to(device) for t in make_batch(batch_size, seconds))
    batch = SimpleNamespace(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[precision]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def forward():
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            if impl in ("ours", "compiled"):  # our trainer's step
                return model.training_output(batch, apply_mask=True).loss
            # NeMo's training_step
            log_probs, enc_len, masks, tokens = model(
                input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy,
                noisy_input_signal_length=lengths, apply_mask=True,
            )
            return model.loss(masks=masks, decoder_outputs=log_probs, targets=tokens, decoder_lengths=enc_len)

    def step(after_forward=None):
        loss = forward()
        if after_forward is not None:
            after_forward()
        loss.backward()
        model.zero_grad(set_to_none=True)
        sync()

    return step


def timed(step):
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def profiled_cpu_memory(step, model=None) -> dict[str, float]:
    """One step under torch's profiler with profile_memory=True: the CPU allocator's running total of bytes
    allocated during the step (and not yet freed), in MB: its peak, and its value where the forward ends.

    With `model`, its gradient buffers are allocated (zeros) before the step, so that the count leaves them out:
    the peak of activations and temporaries alone. (The step frees them again at its end: set_to_none.)"""
    import torch
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile, record_function

    def mark_forward_end():
        with record_function("model_step.forward_end"):
            pass

    if model is not None:
        for p in model.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(mark_forward_end)

    def walk(nodes):
        for n in nodes:
            yield n
            yield from walk(n.children)

    nodes = list(walk(prof.profiler.kineto_results.experimental_event_tree()))
    allocs = sorted((n for n in nodes if n.tag == _EventType.Allocation), key=lambda n: n.start_time_ns)
    end = next(n.start_time_ns for n in nodes if n.name == "model_step.forward_end")
    totals = [n.extra_fields.total_allocated for n in allocs]
    at_end = [n.extra_fields.total_allocated for n in allocs if n.start_time_ns <= end]
    return {"peak_alloc_mb": max(totals) / 2**20, "after_forward_alloc_mb": (at_end[-1] if at_end else 0) / 2**20}


def measure(impl, threads, steps, warmup, device, precision, layers=None, checkpointing=False, batch_size=2,
            seconds=8.0, profile_memory=False):
    """Child process, one implementation: median seconds per step and the process's peak memory."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = build(impl, layers, checkpointing).to(device).train()
    step = make_step(impl, model, device, precision, batch_size, seconds)
    # Memory the step itself needs (activations, gradients, temporaries) above the model and the batch.
    base_rss = current_rss_mb()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_gpu = torch.cuda.memory_allocated() / 2**20
    for _ in range(warmup):
        step()
    times = [timed(step) for _ in range(steps)]
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"median_s": statistics.median(times), "times": times, "peak_rss_mb": peak_rss,
              "step_rss_mb": peak_rss - base_rss}
    # What the forward leaves for the backward (the activations checkpointing drops), measured in one more step.
    live = {}

    def after_forward():
        live["rss"] = current_rss_mb() - base_rss
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            live["gpu"] = torch.cuda.memory_allocated() / 2**20 - base_gpu

    step(after_forward)
    result["after_forward_rss_mb"] = live["rss"]
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["step_gpu_mb"] = result["peak_gpu_mb"] - base_gpu
        result["after_forward_gpu_mb"] = live["gpu"]
    if profile_memory and device == "cpu":
        result.update(profiled_cpu_memory(step))
        result.update({f"{k}_no_grads": v for k, v in profiled_cpu_memory(step, model).items()})
        result["grad_mb"] = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad) / 2**20
    # torch's FlopCounterMode, with the oneDNN linears (CPU) and depthwise-convolution gradients counted right
    from nest_ssl.models.flops import count_flops

    result["flops_per_step"] = count_flops(step)[0]
    return result


def measure_interleaved(threads, steps, warmup):
    """Child process with both toolkits (NeMo's venv, where nest_ssl is installed too): the same weights, steps
    alternating ours / NeMo's, so that load changes on a shared machine hit both alike; per-pair ratios."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    nemo = build("nemo").train()
    ours = build("ours").train()
    ours.load_state_dict(nemo.state_dict(), strict=True)
    step = {"ours": make_step("ours", ours, "cpu", "fp32"), "nemo": make_step("nemo", nemo, "cpu", "fp32")}
    for _ in range(warmup):
        step["nemo"](), step["ours"]()
    times = {"ours": [], "nemo": []}
    for i in range(steps):
        order = ("ours", "nemo") if i % 2 else ("nemo", "ours")
        for name in order:
            times[name].append(timed(step[name]))
    ratios = [o / n for o, n in zip(times["ours"], times["nemo"])]
    return {"times": times, "ratios": ratios}


def run_child(python, impl, args, device="cpu", precision="fp32", checkpointing=False, profile_memory=False):
    cmd = [str(python), __file__, "--child", impl, "--threads", str(args.threads), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", device, "--precision", precision,
           "--batch-size", str(args.batch_size), "--seconds", str(args.seconds)]
    if args.layers:
        cmd += ["--layers", str(args.layers)]
    if checkpointing:
        cmd.append("--checkpointing")
    if profile_memory:
        cmd.append("--profile-memory")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
    if args.checkpointing_memory:
        # glibc otherwise serves freed activations' sizes from its heap afterwards and keeps the pages: the
        # resident set would show the heap's high-water mark, not the memory live at the step's peak.
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{impl} on {device} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def checkpointing_memory(args) -> None:
    """Peak memory of our step without and with activation checkpointing, each in a fresh process."""
    import torch

    # On a GPU machine the GPU only: a GPU-sized batch would take many minutes on its CPU.
    devices = [("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [("cpu", "fp32")]
    layers = args.layers or 17
    print(f"activation checkpointing, {layers}-layer NEST, batch {args.batch_size} x {args.seconds:g} s, "
          f"{args.warmup} warm-up + {args.steps} timed steps per process")
    for device, precision in devices:
        r = {on: run_child(sys.executable, "ours", args, device=device, precision=precision, checkpointing=on,
                           profile_memory=True)
             for on in (False, True)}
        key, live = ("step_gpu_mb", "after_forward_gpu_mb") if device == "cuda" else ("step_rss_mb", "after_forward_rss_mb")
        what = "max_memory_allocated" if device == "cuda" else "RSS"
        off, on = r[False][key], r[True][key]
        print(f"  {device} {precision}: step peak {what} above the built model: without {off:.0f} MB, with "
              f"{on:.0f} MB ({on / max(off, 1e-9):.2f}x); kept after the forward: without {r[False][live]:.0f} MB, "
              f"with {r[True][live]:.0f} MB ({r[True][live] / max(r[False][live], 1e-9):.2f}x); step time without "
              f"{r[False]['median_s']:.3f} s, with {r[True]['median_s']:.3f} s "
              f"({r[True]['median_s'] / r[False]['median_s']:.2f}x)")
        if device == "cpu":
            off, on = r[False]["peak_alloc_mb"], r[True]["peak_alloc_mb"]
            kept_off, kept_on = r[False]["after_forward_alloc_mb"], r[True]["after_forward_alloc_mb"]
            print(f"  {device} {precision}: step peak of allocated CPU memory (profiler, allocator-level): without "
                  f"{off:.0f} MB, with {on:.0f} MB ({on / max(off, 1e-9):.2f}x); allocated at the end of the "
                  f"forward: without {kept_off:.0f} MB, with {kept_on:.0f} MB ({kept_on / max(kept_off, 1e-9):.2f}x); "
                  f"the parameter gradients the step allocates are {r[False]['grad_mb']:.0f} MB of it")
            off, on = r[False]["peak_alloc_mb_no_grads"], r[True]["peak_alloc_mb_no_grads"]
            print(f"  {device} {precision}: the same with the gradient buffers allocated before the step (activations "
                  f"and temporaries only): peak without {off:.0f} MB, with {on:.0f} MB ({on / max(off, 1e-9):.2f}x)")


def device_report(args) -> None:
    """The step on this machine's accelerator (a GPU if there is one, else the CPU, said so), fp32 and bf16:
    time, FLOP/s and model FLOPs utilisation against the chip's dense peak, memory per second of batch audio."""
    import torch

    on_gpu = torch.cuda.is_available()
    device = "cuda" if on_gpu else "cpu"
    name = torch.cuda.get_device_name(0) if on_gpu else "CPU"
    peaks = next((v for k, v in PEAK_FLOPS.items() if k in name), None) if on_gpu else None
    batches = [tuple(float(v) for v in b.split("x")) for b in args.batches.split(",")]
    layers = args.layers or 17
    print(f"{layers}-layer NEST step (forward with masking, loss, backward) on {name}"
          + ("" if on_gpu else " -- NO GPU: a CPU-sized run, not a GPU measurement"))
    if on_gpu and peaks is None:
        print(f"  (no peak FLOP/s known for {name!r}: add it to PEAK_FLOPS for the utilisation figure)")
    impls = ["ours", "compiled"] if args.with_compile else ["ours"]
    for precision, impl in ((p, i) for p in ("fp32", "bf16") for i in impls):
        for n, secs in batches:
            ns = argparse.Namespace(**{**vars(args), "batch_size": int(n), "seconds": secs})
            try:
                r = run_child(sys.executable, impl, ns, device=device, precision=precision)
            except RuntimeError as err:  # e.g. out of memory at the largest batch: report and go on
                last = str(err).strip().splitlines()[-1] if str(err).strip() else "failed"
                print(f"  {precision} {impl} {int(n)} x {secs:g} s: FAILED ({last[:200]})")
                continue
            rate = r["flops_per_step"] / r["median_s"]
            audio = n * secs
            mem = r.get("peak_gpu_mb", r["peak_rss_mb"]) / 1024
            step_mem = r.get("step_gpu_mb", r["step_rss_mb"]) / 1024  # above the model: what the batch costs
            line = (f"  {precision} {impl:8s} {int(n):3d} x {secs:4g} s: {r['median_s'] * 1000:8.1f} ms/step, "
                    f"{r['flops_per_step'] / 1e9:9.1f} GFLOP/step, {rate / 1e12:7.3f} TFLOP/s")
            if peaks:
                ref = peaks["bf16"] if precision == "bf16" else peaks["fp32"]
                line += f", MFU {rate / ref:6.1%}"
                if precision == "fp32":
                    line += f" (of tf32 peak {rate / peaks['tf32']:5.1%})"
            line += (f", peak {'GPU' if on_gpu else 'RSS'} {mem:6.2f} GiB, step {step_mem:6.2f} GiB = "
                     f"{step_mem / audio * 100:5.2f} GiB per 100 s of batch audio, {audio / r['median_s']:8.1f} audio s/s")
            print(line, flush=True)


def nemo_available():
    if not NEMO_PY.exists():
        return False
    probe = subprocess.run([str(NEMO_PY), "-c", "import nemo.collections.asr"], capture_output=True)
    return probe.returncode == 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--child", choices=["ours", "compiled", "nemo", "interleaved"])
    p.add_argument("--with-compile", action="store_true",
                   help="also time ours with nest_trainer.compile (torch.compile of the Conformer layers), in its "
                        "own processes alternating with eager and NeMo")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--layers", type=int, default=None, help="Conformer layers (default: the config's 17)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seconds", type=float, default=8.0, help="seconds of audio per utterance")
    p.add_argument("--checkpointing", action="store_true", help="(child) activation checkpointing on")
    p.add_argument("--profile-memory", action="store_true",
                   help="(child) one more step under torch's profiler: the CPU allocator's peak")
    p.add_argument("--checkpointing-memory", action="store_true",
                   help="peak memory of our step with and without activation checkpointing, then exit")
    p.add_argument("--device-report", action="store_true",
                   help="our step on the GPU (else the CPU, said so) in fp32 and bf16 for --batches: MFU, memory")
    p.add_argument("--batches", default="2x8,8x16,32x16", help="for --device-report: NxSECONDS,...")
    args = p.parse_args()
    if args.child == "interleaved":
        print(json.dumps(measure_interleaved(args.threads, args.steps, args.warmup)))
        return
    if args.child:
        print(json.dumps(measure(args.child, args.threads, args.steps, args.warmup, args.device, args.precision,
                                 args.layers, args.checkpointing, args.batch_size, args.seconds,
                                 args.profile_memory)))
        return
    if args.checkpointing_memory:
        checkpointing_memory(args)
        return
    if args.device_report:
        device_report(args)
        return

    impls = {"ours": sys.executable}
    if args.with_compile:
        impls["compiled"] = sys.executable
    if nemo_available():
        impls["nemo"] = NEMO_PY
    else:
        print("NeMo is not importable (.venv-nemo missing: run `make parity` to build it); timing ours only")
    print(f"17-layer NEST, batch 2 x 8 s, CPU, {args.threads} threads, {args.warmup} warm-up + {args.steps} timed steps"
          f" x {args.repeats} rounds")
    results = {name: [] for name in impls}
    for round_ in range(args.repeats):
        for name, python in impls.items():
            r = run_child(python, name, args)
            results[name].append(r)
            print(f"  round {round_ + 1} {name:8s}: median {r['median_s']:.3f} s/step, peak RSS {r['peak_rss_mb']:.0f} MB")
    # Medians are the figure; the fastest step is printed too because on a shared machine it is the least
    # disturbed measurement of each implementation.
    summary, best = {}, {}
    for name, rs in results.items():
        times = [t for r in rs for t in r["times"]]
        summary[name], best[name] = statistics.median(times), min(times)
        peak = max(r["peak_rss_mb"] for r in rs)
        print(f"{name:8s}: median {summary[name]:.3f} s/step, fastest {best[name]:.3f} s/step "
              f"({len(times)} steps), peak RSS {peak:.0f} MB")
    if "compiled" in summary:
        print(f"ratio compiled / eager (ours): pooled medians {summary['compiled'] / summary['ours']:.3f}"
              + (f"; compiled / NeMo {summary['compiled'] / summary['nemo']:.3f}" if "nemo" in summary else ""))
    if "nemo" in summary:
        per_round = [o["median_s"] / n["median_s"] for o, n in zip(results["ours"], results["nemo"])]
        print(f"separate processes, ratio ours / NeMo: pooled medians {summary['ours'] / summary['nemo']:.3f}, "
              f"per round {', '.join(f'{r:.3f}' for r in per_round)}")
        # The figure to read: both models in one process, steps alternating, so that the drifting load of a
        # shared machine hits both alike.
        inter = run_child(NEMO_PY, "interleaved", argparse.Namespace(**{**vars(args), "steps": 4 * args.steps}))
        med = {k: statistics.median(v) for k, v in inter["times"].items()}
        ratio = statistics.median(inter["ratios"])
        print(f"interleaved in one process ({len(inter['ratios'])} step pairs): ours {med['ours']:.3f} s/step, "
              f"NeMo {med['nemo']:.3f} s/step; ratio ours / NeMo {ratio:.3f} (median of per-pair ratios; "
              f"target <= 0.75: {'met' if ratio <= 0.75 else 'NOT met'})")

    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peaks = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        for precision in ("fp32", "bf16"):
            for impl, python in impls.items():
                r = run_child(python, impl, args, device="cuda", precision=precision)
                mfu = r["flops_per_step"] / r["median_s"] / peaks[precision] if peaks else float("nan")
                print(f"GPU {name} {precision} {impl}: {r['median_s'] * 1000:.1f} ms/step, peak "
                      f"{r['peak_gpu_mb']:.0f} MB, {r['flops_per_step'] / r['median_s'] / 1e12:.1f} TFLOP/s, MFU {mfu:.1%}")


if __name__ == "__main__":
    main()
