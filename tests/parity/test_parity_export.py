"""Interchange with NeMo 2.7.3 both ways: our .nemo restores in NeMo's EncDecDenoiseMaskedTokenPredModel and gives
our outputs; NeMo's save_to (also with the legacy decoder_ssl keys of ssl_en_nest_large_v1.0) imports into ours."""

import io
import logging
import tarfile

import pytest
import torch
from omegaconf import OmegaConf

from nest_ssl.checkpoint import save_checkpoint
from nest_ssl.checkpoint.model import load_model
from nest_ssl.config import load_config
from nest_ssl.export.nemo import export_nemo, import_nemo
from nest_ssl.models import NESTModel


def tiny_cfg():
    return load_config(config_name="nest_tiny", overrides=[
        "model.train_ds.manifest_filepath=train.json", "model.validation_ds.manifest_filepath=val.json"])


def inputs():
    g = torch.Generator().manual_seed(3)
    audio = torch.randn(2, 32000, generator=g) * 0.1
    lengths = torch.tensor([32000, 21000])
    audio[1, 21000:] = 0
    noisy = audio + torch.randn(audio.shape, generator=g) * 0.02 * (torch.arange(32000) < lengths[:, None])
    return audio, lengths, noisy


def forward(model):
    audio, lengths, noisy = inputs()
    with torch.no_grad():
        return model(input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy,
                     noisy_input_signal_length=lengths, apply_mask=False)


@pytest.fixture(scope="module")
def our_checkpoint(tmp_path_factory):
    """Our tiny model with non-default weights and BatchNorm statistics, as a checkpoint."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = NESTModel.from_config(cfg.model)
    model.train()
    audio, lengths, noisy = inputs()
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
        model(input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy,
              noisy_input_signal_length=lengths, apply_mask=True)  # moves BatchNorm running stats
    model.eval()
    path = tmp_path_factory.mktemp("parity_export") / "ours.ckpt"
    save_checkpoint({"state_dict": model.state_dict(), "nest_ssl": {"config": OmegaConf.to_container(cfg, resolve=True)}},
                    path)
    return path, model


def test_nemo_restores_our_export_with_the_same_outputs(our_checkpoint, tmp_path):
    from nemo.collections.asr.models import EncDecDenoiseMaskedTokenPredModel

    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    path, ours = our_checkpoint
    out = export_nemo(path, tmp_path / "ours.nemo")
    nemo = EncDecDenoiseMaskedTokenPredModel.restore_from(str(out), map_location="cpu", strict=True)
    nemo.eval()
    assert type(nemo).__name__ == "EncDecDenoiseMaskedTokenPredModel"
    assert nemo.encoder._feat_out == 96 and len(nemo.encoder.layers) == 2
    for name, a, b in zip(("log_probs", "encoded_len", "masks", "tokens"), forward(ours), forward(nemo)):
        if a.is_floating_point():
            diff = (a - b).abs().max().item()
            print(f"[parity] export {name}: max |ours - NeMo| = {diff:.3e}")
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        else:
            assert torch.equal(a, b), name


def test_nemo_save_to_imports_into_ours(our_checkpoint, tmp_path):
    from nemo.collections.asr.models import EncDecDenoiseMaskedTokenPredModel

    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    path, _ = our_checkpoint
    nemo = EncDecDenoiseMaskedTokenPredModel.restore_from(str(export_nemo(path, tmp_path / "a.nemo")),
                                                          map_location="cpu")
    with torch.no_grad():
        for p in nemo.decoder.parameters():
            p.mul_(1.5)  # weights only NeMo has seen
    nemo.eval()
    saved = tmp_path / "nemo_saved.nemo"
    nemo.save_to(str(saved))

    # Also as the released checkpoints look: an extra, unused decoder_ssl (NeMo before PR #12390).
    legacy = tmp_path / "legacy.nemo"
    with tarfile.open(saved, "r:") as src:
        members = {m.name: src.extractfile(m).read() for m in src.getmembers() if m.isfile()}
    wname = next(n for n in members if n.endswith("model_weights.ckpt"))
    sd = torch.load(io.BytesIO(members[wname]), map_location="cpu")
    sd["decoder_ssl.decoder_layers.0.weight"] = sd["decoder.decoder_layers.0.weight"].clone()
    sd["decoder_ssl.decoder_layers.0.bias"] = sd["decoder.decoder_layers.0.bias"].clone()
    buf = io.BytesIO()
    torch.save(sd, buf)
    members[wname] = buf.getvalue()
    with tarfile.open(legacy, "w:") as dst:
        for name, blob in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            dst.addfile(info, io.BytesIO(blob))

    for nemo_file in (saved, legacy):
        ckpt = import_nemo(nemo_file, tmp_path / f"{nemo_file.stem}.ckpt")
        ours, _ = load_model(ckpt)
        for name, a, b in zip(("log_probs", "encoded_len", "masks", "tokens"), forward(ours), forward(nemo)):
            if a.is_floating_point():
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            else:
                assert torch.equal(a, b), name
        # extraction reads the .nemo directly, too
        direct, _ = load_model(nemo_file)
        assert all(torch.equal(x, y) for x, y in zip(forward(direct), forward(ours)))
