"""Encoder representations as Lhotse features, for downstream tasks.

`extract(model_path, cuts, out_dir, layer=-1)` runs every cut through the preprocessor (eval: no dither) and the
encoder (eval: no dropout, no masking, clean audio) and stores the output of one layer per cut:

    layer 0          the input of the first Conformer layer (subsampled features + xscaling)
    layer 1..N       the output of Conformer layer N
    layer -1         the encoder's output (= layer N unless the encoder has an output projection)

Each cut is processed alone, so there is no padding and a cut's features do not depend on its neighbours.
Frames are (T', d_model) at the encoder rate (10 ms x subsampling_factor = 80 ms). The result is
`OUT_DIR/cuts.jsonl.gz`: the input cuts with `features` attached (cut.load_features() returns the array), stored in
`OUT_DIR/feats/` (numpy_files: one exact .npy per cut, the default) or `OUT_DIR/feats.lca` (lilcom_chunky: one
compressed file, lossy at about 1e-3 relative; needs the optional `lilcom` package).
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from nest_ssl.models.hooks import layer_output_hook

log = logging.getLogger(__name__)

STORAGE_TYPES = ("lilcom_chunky", "numpy_files")


@torch.no_grad()
def encode(model, audio: torch.Tensor, layer: int = -1) -> np.ndarray:
    """(T', D) float32 representation of one waveform (1-D tensor) at `layer`."""
    device = next(model.parameters()).device
    x = audio.reshape(1, -1).to(device=device, dtype=torch.float32)
    length = torch.tensor([x.shape[1]], dtype=torch.int64, device=device)
    holder, handle = layer_output_hook(model.encoder, layer)
    try:
        feats, feat_len = model.preprocessor(input_signal=x, length=length)
        encoded, enc_len = model.encoder(audio_signal=feats, length=feat_len)
    finally:
        if handle is not None:
            handle.remove()
    n = int(enc_len[0])
    if layer == -1:
        rep = encoded[0].transpose(0, 1)[:n]  # (T', D)
    else:
        rep = holder["x"][0][:n]  # hooks see (B, T', D)
    return rep.float().cpu().numpy()


def _load_audio(cut, cuts_path) -> np.ndarray:
    """cut.load_audio(), with an audio file that is missing or cannot be decoded reported as the user's (ExportError
    naming the manifest, the cut and the file) instead of lhotse's multi-backend traceback."""
    from lhotse.audio.utils import AudioLoadingError

    from nest_ssl.export.nemo import ExportError

    try:
        return cut.load_audio()
    except AudioLoadingError as err:
        sources = [s.source for s in cut.recording.sources if s.type == "file"] if cut.has_recording else []
        missing = [s for s in sources if not os.path.exists(s)]
        why = (f"audio file {missing[0]} does not exist" if missing
               else f"audio {', '.join(map(str, sources)) or 'of the cut'} cannot be decoded "
                    f"({str(err).splitlines()[0]})")
        raise ExportError(f"{cuts_path}: cut {cut.id}: {why}; fix the manifest or the file") from None


def extract(
    model_path: str | Path,
    cuts_path: str | Path,
    out_dir: str | Path,
    layer: int = -1,
    storage: str = "numpy_files",
    device: str = "cpu",
) -> Path:
    """Writes OUT_DIR/cuts.jsonl.gz with the representations attached as Lhotse features; returns its path."""
    from lhotse import CutSet, Features
    from lhotse.features.io import LilcomChunkyWriter, NumpyFilesWriter
    from lhotse.utils import fastcopy

    from nest_ssl.data.manifests import open_cutset
    from nest_ssl.checkpoint.model import load_model

    if storage not in STORAGE_TYPES:
        raise ValueError(f"storage {storage!r}: choose one of {', '.join(STORAGE_TYPES)}")
    if storage == "lilcom_chunky":
        try:
            import lilcom  # noqa: F401
        except ImportError:
            raise ValueError("storage lilcom_chunky needs the `lilcom` package (pip install lilcom); "
                             "or use numpy_files") from None
    model, model_cfg = load_model(model_path, device=device)
    sr = int(model_cfg.get("sample_rate", 16000))
    frame_shift = float(model_cfg["preprocessor"].get("window_stride", 0.01)) * int(
        model_cfg["encoder"].get("subsampling_factor", 8))
    out_dir = Path(out_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        cuts = open_cutset(str(cuts_path), what="extract cuts", sample_rate=sr)
        writer = (LilcomChunkyWriter(out_dir / "feats.lca") if storage == "lilcom_chunky"
                  else NumpyFilesWriter(out_dir / "feats"))
        out_path = out_dir / "cuts.jsonl.gz"
        n = 0
        with writer, CutSet.open_writer(out_path) as cut_writer:
            for cut in cuts:
                if cut.sampling_rate != sr:
                    cut = cut.resample(sr)
                audio = torch.from_numpy(np.ascontiguousarray(_load_audio(cut, cuts_path)[0]))
                rep = encode(model, audio, layer)
                # Cut ids may hold "/" (paths); storage keys must not, and must stay unique.
                key = writer.write(f"{n:08d}_" + cut.id.replace("/", "_").replace(os.sep, "_"), rep)
                feats = Features(
                    type=f"nest_layer{layer}",
                    num_frames=rep.shape[0],
                    num_features=rep.shape[1],
                    frame_shift=frame_shift,
                    sampling_rate=sr,
                    start=cut.start,
                    duration=cut.duration,
                    storage_type=writer.name,
                    storage_path=str(writer.storage_path),
                    storage_key=key,
                )
                cut_writer.write(fastcopy(cut, features=feats) if hasattr(cut, "features") else cut)
                n += 1
    except BaseException:
        if created:  # a run that failed (a bad cut, an interrupt) leaves no half-written folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    log.info("extracted layer %d for %d cuts into %s", layer, n, out_path)
    return out_path
