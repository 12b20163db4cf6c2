"""CTC fine-tuning of the whole encoder: a tiny NEST model overfits three tone utterances to CER 0."""

import torch

from evaluate_corpus import make_corpus, tiny_checkpoint
from nest_ssl.evaluate import features, finetune
from nest_ssl.evaluate.data import load_split


def test_finetune_overfits_a_tiny_set_to_cer_zero(tmp_path):
    cuts = make_corpus(tmp_path / "corpus", per_speaker=(1, 1, 1))
    nest, cfg = features.load_pretrained(tiny_checkpoint(tmp_path / "tiny.ckpt"))
    train = load_split(cuts["train"], "train", ["finetune"], 16000)
    before = {k: v.clone() for k, v in nest.encoder.state_dict().items()}

    model = finetune.from_nest(nest, upsample=2)
    out = finetune.finetune(model, {"train": train, "dev": train, "test": train}, steps=60, lr=3e-3, batch_size=3,
                            seed=0, eval_every=10)
    assert out.test == {"cer": 0.0, "wer": 0.0}, out.hypotheses
    assert out.hypotheses == [u.text for u in train]
    # the whole encoder trained (not just the head), on a copy: the NEST model itself is unchanged
    tuned = model.encoder.state_dict()
    assert not torch.equal(tuned["layers.0.self_attn.linear_q.weight"], before["layers.0.self_attn.linear_q.weight"])
    assert not torch.equal(tuned["pre_encode.conv.0.weight"], before["pre_encode.conv.0.weight"])
    assert all(torch.equal(v, before[k]) for k, v in nest.encoder.state_dict().items())
