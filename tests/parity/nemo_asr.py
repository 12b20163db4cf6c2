"""What the CTC and RNN-T parity tests share: audio batches, NeMo-style configs of a small Conformer recognizer, the
targets NeMo's losses take, and `nest-ssl transcribe` as a subprocess."""

import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))
from asr_corpus import SENTENCES  # noqa: E402

REPO = TESTS.parent
LABELS = [" ", *"abcdefghijklmnopqrstuvwxyz", "'"]  # a character model's vocabulary, as NeMo's yaml spells it


def quiet_nemo():
    logging.getLogger("nemo_logger").setLevel(logging.ERROR)


def norm(text: str) -> str:
    """Our transcripts have their whitespace collapsed (docs/asr.md); NeMo's are compared the same way."""
    return " ".join(text.split())


def batch_of(wavs):
    import soundfile as sf

    audio = [torch.from_numpy(sf.read(str(w), dtype="float32")[0]) for w in wavs]
    lengths = torch.tensor([len(a) for a in audio])
    batch = torch.zeros(len(audio), int(lengths.max()))
    for i, a in enumerate(audio):
        batch[i, :len(a)] = a
    return batch, lengths


def padded_targets(targets):
    """(padded target ids, their lengths) as NeMo's losses take them."""
    target_len = torch.tensor([len(t) for t in targets])
    padded = torch.zeros(len(targets), int(target_len.max()), dtype=torch.long)
    for i, t in enumerate(targets):
        padded[i, :len(t)] = torch.tensor(t)
    return padded, target_len


def nemo_base_config(tmp_path, kind):
    """The head-independent sections of a small Conformer recognizer as a NeMo user writes them (NeMo's yaml keys and
    `_target_`s); for kind bpe a SentencePiece tokenizer trained by NeMo's create_spt_model, for char the `labels`."""
    cfg = {
        "sample_rate": 16000,
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025,
                         "window_stride": 0.01, "window": "hann", "features": 40, "n_fft": 512, "log": True,
                         "frame_splicing": 1, "dither": 1e-5, "pad_to": 0, "pad_value": 0.0},
        "spec_augment": {"_target_": "nemo.collections.asr.modules.SpectrogramAugmentation", "freq_masks": 2,
                         "time_masks": 2, "freq_width": 27, "time_width": 0.05},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": 40, "feat_out": -1,
                    "n_layers": 2, "d_model": 64, "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": 32, "ff_expansion_factor": 4, "self_attention_model": "rel_pos",
                    "n_heads": 4, "att_context_size": [-1, -1], "xscaling": True, "untie_biases": True,
                    "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
                    "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1},
        "validation_ds": {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 2, "shuffle": False,
                          "use_start_end_token": False},
    }
    if kind == "bpe":
        from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

        text = tmp_path / "text.txt"
        text.write_text("\n".join(SENTENCES * 4) + "\n")
        create_spt_model(str(text), vocab_size=16, sample_size=-1, do_lower_case=False, tokenizer_type="bpe",
                         output_dir=str(tmp_path / "tok"))
        cfg["tokenizer"] = {"dir": str(tmp_path / "tok"), "type": "bpe"}
    else:
        cfg["labels"] = list(LABELS)
    return cfg


def cli_transcribe(path, wavs):
    """`nest-ssl transcribe PATH WAV...` in a subprocess: the text it prints for each file, in order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.run([sys.executable, "-m", "nest_ssl.cli", "transcribe", str(path), *map(str, wavs)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    printed = dict(line.split("\t", 1) if "\t" in line else (line, "") for line in p.stdout.splitlines())
    return [printed[str(w)] for w in wavs]
