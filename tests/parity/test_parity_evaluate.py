"""Evaluation of a .nemo written by NeMo 2.7.3's own save_to: the same hidden states as NeMo's encoder, and the same
results as evaluating the model imported into our checkpoint format."""

import logging
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf

from nest_ssl.checkpoint import save_checkpoint
from nest_ssl.config import load_config
from nest_ssl.evaluate import features
from nest_ssl.evaluate.run import EvalOptions, evaluate
from nest_ssl.export.nemo import export_nemo, import_nemo
from nest_ssl.models import NESTModel

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from evaluate_corpus import make_corpus  # noqa: E402


def test_nemo_saved_archive_evaluates_as_ours(tmp_path):
    from nemo.collections.asr.models import EncDecDenoiseMaskedTokenPredModel

    logging.getLogger("nemo_logger").setLevel(logging.ERROR)
    cfg = load_config(config_name="nest_tiny", overrides=[
        "model.train_ds.manifest_filepath=train.json", "model.validation_ds.manifest_filepath=val.json"])
    torch.manual_seed(0)
    ours = NESTModel.from_config(cfg.model)
    ckpt = save_checkpoint({"state_dict": ours.state_dict(),
                            "nest_ssl": {"config": OmegaConf.to_container(cfg, resolve=True)}}, tmp_path / "o.ckpt")
    nemo = EncDecDenoiseMaskedTokenPredModel.restore_from(str(export_nemo(ckpt, tmp_path / "o.nemo")),
                                                          map_location="cpu")
    with torch.no_grad():
        for p in nemo.encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))  # weights only NeMo has seen
    nemo.eval()
    saved = tmp_path / "nemo_saved.nemo"
    nemo.save_to(str(saved))

    # every hidden state of our encoder, loaded from NeMo's archive, equals NeMo's own (hooked the same way)
    loaded, _ = features.load_pretrained(saved)
    audio = torch.randn(24000, generator=torch.Generator().manual_seed(1)) * 0.1
    mine = features.layer_outputs(loaded, audio)
    theirs = features.layer_outputs(nemo, audio)  # NeMo's modules have the same attributes and forward contracts
    torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)

    cuts = make_corpus(tmp_path / "corpus", per_speaker=(2, 1, 1))
    opts = EvalOptions(tasks=("phone", "speaker"), random_seeds=1, epochs=2)
    direct = evaluate(saved, cuts, tmp_path / "direct", opts).rows
    imported = evaluate(import_nemo(saved, tmp_path / "imported.ckpt"), cuts, tmp_path / "imported", opts).rows
    assert direct == imported
