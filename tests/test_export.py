""".nemo export/import, encoder-only export, init_from_* and representation extraction (ours; NeMo's side is in
tests/parity/test_parity_export.py)."""

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from nest_ssl.checkpoint import load_checkpoint
from nest_ssl.checkpoint.model import load_model
from nest_ssl.checkpoint.nemo import NEMO_MODEL_TARGET, read_nemo, write_nemo
from nest_ssl.cli import main as cli
from nest_ssl.config import load_config
from nest_ssl.export.extract import encode
from nest_ssl.export.nemo import export_nemo, import_nemo
from nest_ssl.models import NESTModel
from nest_ssl.train.run import init_from_pretrained

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real checkpoint: the tiny model trained for 3 steps in this process (BatchNorm stats moved too)."""
    from nest_ssl.train import run

    d = tmp_path_factory.mktemp("export")
    subprocess.run([sys.executable, str(REPO / "recipes/nest/make_dummy_data.py"), "--out-dir", str(d / "data"),
                    "--num-train", "8", "--num-val", "3", "--min-seconds", "1.2", "--max-seconds", "2.5"],
                   check=True, capture_output=True)
    cfg = load_config(config_name="nest_tiny", overrides=[
        f"model.train_ds.manifest_filepath={d}/data/train_manifest.json",
        f"model.validation_ds.manifest_filepath={d}/data/val_manifest.json",
        "trainer.max_steps=3", "trainer.val_check_interval=3", "trainer.check_val_every_n_epoch=null",
        f"exp_manager.exp_dir={d}/exp",
        "trainer.enable_progress_bar=false", "+trainer.enable_model_summary=false",
        "exp_manager.checkpoint_callback_params.always_save_nemo=false"])
    result = run(cfg)
    ckpt = next((result.log_dir / "checkpoints").glob("*-last.ckpt"))
    return d, ckpt, cfg


def outputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(2, 24000, generator=g) * 0.1
    lengths = torch.tensor([24000, 17000])
    with torch.no_grad():
        return model(input_signal=audio, input_signal_length=lengths, noisy_input_signal=audio,
                     noisy_input_signal_length=lengths, apply_mask=False)


def test_nemo_archive_layout_and_roundtrip(trained, tmp_path):
    d, ckpt_path, cfg = trained
    out = export_nemo(ckpt_path, tmp_path / "m.nemo")
    with tarfile.open(out, "r:") as tar:  # uncompressed, as NeMo >= 1.7 writes
        assert sorted(tar.getnames()) == ["./model_config.yaml", "./model_weights.ckpt"]
        mcfg = yaml.safe_load(tar.extractfile("./model_config.yaml"))
    assert mcfg["target"] == NEMO_MODEL_TARGET and mcfg["nemo_version"] == "2.7.3"
    for section in ("preprocessor", "encoder", "decoder", "quantizer", "masking", "loss", "spec_augment"):
        assert mcfg[section]["_target_"].startswith("nemo.collections.asr."), section
    assert mcfg["train_ds"]["batch_augmentor"]["_target_"] == \
        "nemo.collections.asr.modules.ssl_modules.MultiSpeakerNoiseAugmentation"
    assert mcfg["encoder"]["n_layers"] == 2 and mcfg["encoder"]["d_model"] == 96
    _, sd = read_nemo(out)
    ck = load_checkpoint(ckpt_path)
    assert list(sd) == list(ck["state_dict"])  # NeMo's key names and order
    assert all(torch.equal(sd[k], ck["state_dict"][k]) for k in sd)

    m_ckpt, _ = load_model(ckpt_path)
    m_nemo, _ = load_model(out)
    for a, b in zip(outputs(m_ckpt), outputs(m_nemo)):
        assert torch.equal(a, b)

    # NeMo's .nemo -> our checkpoint -> the same model
    imp = import_nemo(out, tmp_path / "imported.ckpt")
    m_imp, _ = load_model(imp)
    for a, b in zip(outputs(m_ckpt), outputs(m_imp)):
        assert torch.equal(a, b)


def test_import_legacy_nemo_with_decoder_ssl_and_gzip(trained, tmp_path):
    """Checkpoints from before NeMo PR #12390 (e.g. ssl_en_nest_large_v1.0) carry decoder_ssl.*; old .nemo files
    are gzipped tars."""
    _, ckpt_path, cfg = trained
    ck = load_checkpoint(ckpt_path)
    sd = dict(ck["state_dict"])
    sd["decoder_ssl.decoder_layers.0.weight"] = torch.randn(1024, 96, 1)
    sd["decoder_ssl.decoder_layers.0.bias"] = torch.randn(1024)
    plain = write_nemo(tmp_path / "legacy.nemo", cfg.model, sd)
    gz = tmp_path / "legacy_gz.nemo"
    with tarfile.open(plain) as src, tarfile.open(gz, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
    for path in (plain, gz):
        out = import_nemo(path, tmp_path / f"{path.stem}.ckpt")
        got = load_checkpoint(out)
        assert not any(k.startswith("decoder_ssl.") for k in got["state_dict"])
        assert all(torch.equal(got["state_dict"][k], ck["state_dict"][k]) for k in ck["state_dict"])
    # and it continues into training as init_from_nemo_model / init_from_ptl_ckpt
    model = NESTModel.from_config(cfg.model)
    init_from_pretrained(model, OmegaConf.create({"init_from_nemo_model": str(gz)}))
    assert all(torch.equal(model.state_dict()[k], ck["state_dict"][k]) for k in ck["state_dict"])


def test_export_of_a_nemo_rewrites_it_in_the_current_layout(trained, tmp_path, capsys):
    """`nest-ssl export IN.nemo --to nemo OUT.nemo` (docs/training.md): a gzipped legacy archive with decoder_ssl.*
    becomes a plain one without them, with the same config and weights."""
    _, ckpt_path, cfg = trained
    ck = load_checkpoint(ckpt_path)
    sd = {**ck["state_dict"], "decoder_ssl.decoder_layers.0.bias": torch.randn(1024)}
    plain = write_nemo(tmp_path / "legacy.nemo", cfg.model, sd)
    gz = tmp_path / "legacy_gz.nemo"
    with tarfile.open(plain) as src, tarfile.open(gz, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
    out = tmp_path / "out.nemo"
    assert cli(["export", str(gz), "--to", "nemo", str(out)]) == 0
    assert tarfile.open(out).getnames() and not out.read_bytes().startswith(b"\x1f\x8b")  # not gzipped
    cfg_in, _ = read_nemo(gz)
    cfg_out, sd_out = read_nemo(out)
    assert cfg_out == cfg_in and sd_out.keys() == ck["state_dict"].keys()
    assert all(torch.equal(sd_out[k], ck["state_dict"][k]) for k in sd_out)
    capsys.readouterr()


def test_encoder_only_export_initialises_a_downstream_encoder(trained, tmp_path, capsys):
    _, ckpt_path, cfg = trained
    out = tmp_path / "enc.ckpt"
    assert cli(["export", str(ckpt_path), "--to", "nemo", str(out), "--encoder-only"]) == 0
    enc = torch.load(out, map_location="cpu", weights_only=True)  # what NeMo's init_from_ptl_ckpt does
    assert enc["state_dict"] and all(k.startswith("encoder.") for k in enc["state_dict"])
    assert enc["hyper_parameters"]["cfg"]["encoder"]["_target_"] == "nemo.collections.asr.modules.ConformerEncoder"
    trained_sd = load_checkpoint(ckpt_path)["state_dict"]
    torch.manual_seed(123)
    fresh = NESTModel.from_config(cfg.model)
    before_decoder = fresh.decoder.decoder_layers[0].weight.clone()
    init_from_pretrained(fresh, OmegaConf.create(
        {"init_from_ptl_ckpt": {"enc": {"path": str(out), "include": ["encoder."]}}}))
    sd = fresh.state_dict()
    assert all(torch.equal(sd[k], trained_sd[k]) for k in trained_sd if k.startswith("encoder."))
    assert torch.equal(fresh.decoder.decoder_layers[0].weight, before_decoder)
    # --encoder-only does not pretend to write a .nemo
    assert cli(["export", str(ckpt_path), str(tmp_path / "enc.nemo"), "--encoder-only"]) == 2
    assert "init_from_ptl_ckpt" in capsys.readouterr().err


def test_export_refuses_corrupt_and_non_nest_inputs(trained, tmp_path, capsys):
    _, ckpt_path, cfg = trained
    bad = tmp_path / "bad.ckpt"
    data = bytearray(ckpt_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert cli(["export", str(bad), str(tmp_path / "x.nemo")]) == 2  # a user error: one line, exit 2
    assert "digest" in capsys.readouterr().err
    other = write_nemo(tmp_path / "ctc.nemo", cfg.model, load_checkpoint(ckpt_path)["state_dict"])
    with tarfile.open(other) as t:
        mcfg = yaml.safe_load(t.extractfile("./model_config.yaml"))
        weights = t.extractfile("./model_weights.ckpt").read()
    mcfg["target"] = "nemo.collections.asr.models.ctc_models.EncDecCTCModel"
    with tarfile.open(other, "w:") as t:
        for name, blob in (("./model_config.yaml", yaml.safe_dump(mcfg).encode()), ("./model_weights.ckpt", weights)):
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            t.addfile(info, io.BytesIO(blob))
    assert cli(["import-nemo", str(other), str(tmp_path / "y.ckpt")]) == 2
    assert "is not NEST" in capsys.readouterr().err


def test_extract_writes_lhotse_features(trained, tmp_path):
    from lhotse import CutSet

    d, ckpt_path, _ = trained
    manifest = d / "data" / "val_manifest.json"
    model, _ = load_model(ckpt_path)
    for layer in (-1, 1, 0):
        out_dir = tmp_path / f"layer{layer}"
        assert cli(["extract", str(ckpt_path), str(manifest), str(out_dir), "--layer", str(layer)]) == 0
        cuts = CutSet.from_file(out_dir / "cuts.jsonl.gz")
        assert len(cuts) == 3
        for cut in cuts:
            feats = cut.load_features()
            assert feats.shape[1] == 96 and abs(feats.shape[0] - cut.duration / 0.08) <= 1
            assert cut.features.frame_shift == pytest.approx(0.08)
            audio = torch.from_numpy(cut.load_audio()[0])
            ref = encode(model, audio, layer)
            np.testing.assert_array_equal(feats, ref[: feats.shape[0]])  # numpy_files: exact
    # layer -1 is the encoder's output
    cut = cuts[0]
    audio = torch.from_numpy(cut.load_audio()[0]).reshape(1, -1)
    with torch.no_grad():
        f, fl = model.preprocessor(input_signal=audio, length=torch.tensor([audio.shape[1]]))
        enc, el = model.encoder(audio_signal=f, length=fl)
    last = encode(model, audio[0], -1)
    np.testing.assert_array_equal(last, enc[0].T[: int(el[0])].numpy())
    assert not np.array_equal(encode(model, audio[0], 1), last)  # layer 1 of 2 is not the output
    with pytest.raises(ValueError, match="layers 1..2"):
        encode(model, audio[0], 3)
