"""Activation checkpointing per Conformer layer (`+model.encoder.activation_checkpointing=true`): the same step
(loss, gradients, BatchNorm buffers, RNG afterwards) with dropout and stochastic depth on, fewer saved activations,
the same state dict, and a .nemo whose config NeMo accepts (the key is ours)."""

import torch

from nest_ssl.config import load_config
from nest_ssl.checkpoint.nemo import nemo_model_config
from nest_ssl.models import NESTModel
from nest_ssl.modules.conformer import ConformerEncoder

ENCODER = dict(feat_in=80, n_layers=3, d_model=64, n_heads=4, subsampling="dw_striding", subsampling_factor=8,
               subsampling_conv_channels=32, conv_kernel_size=9, dropout=0.2, dropout_pre_encoder=0.1,
               dropout_emb=0.1, dropout_att=0.2, stochastic_depth_drop_prob=0.5, stochastic_depth_start_layer=1)


def encoders(**extra):
    torch.manual_seed(0)
    plain = ConformerEncoder(**ENCODER, **extra)
    ckpt = ConformerEncoder(**ENCODER, activation_checkpointing=True, **extra)
    ckpt.load_state_dict(plain.state_dict())
    return plain.train(), ckpt.train()


def inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 80, 160, generator=g)
    lengths = torch.tensor([160, 120, 97])
    return x, lengths


def run_step(encoder, x, lengths, seed):
    """Forward + backward of a padded batch; the loss weights frames so every output matters."""
    encoder.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    xin = x.clone().requires_grad_(True)
    out, out_len = encoder(audio_signal=xin, length=lengths)
    w = torch.linspace(-1, 1, out.numel()).reshape(out.shape)
    loss = (out * w).sum()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in encoder.named_buffers()}
    return loss.detach(), grads, xin.grad.clone(), buffers, torch.rand(4)  # the RNG stream after the step


def test_same_loss_gradients_buffers_and_rng_with_dropout_and_stochastic_depth():
    plain, ckpt = encoders()
    x, lengths = inputs()
    for seed in (3, 4, 5):  # several seeds: stochastic depth drops different layers
        ref = run_step(plain, x, lengths, seed)
        got = run_step(ckpt, x, lengths, seed)
        assert torch.equal(got[0], ref[0]), seed
        assert got[1].keys() == ref[1].keys()
        for name in ref[1]:
            torch.testing.assert_close(got[1][name], ref[1][name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(got[2], ref[2], rtol=0, atol=0)
        # The recomputation does not update BatchNorm a second time.
        for name in ref[3]:
            assert torch.equal(got[3][name], ref[3][name]), name
        assert torch.equal(got[4], ref[4])
    assert int(ckpt.layers[0].conv.batch_norm.num_batches_tracked) == 3


def test_dropout_is_really_on():
    # Guard for the test above: two seeds give different steps, so equal steps are not equal by accident.
    plain, _ = encoders()
    x, lengths = inputs()
    assert not torch.equal(run_step(plain, x, lengths, 3)[0], run_step(plain, x, lengths, 4)[0])


def layer_saved_bytes(encoder, x, lengths):
    """Bytes of tensors autograd keeps for the backward while the Conformer layers run (the subsampler, which
    checkpointing leaves alone, is not counted)."""
    total, inside = 0, [False]

    def pack(t):
        nonlocal total
        if inside[0]:
            total += t.numel() * t.element_size()
        return t

    handles = []
    for layer in encoder.layers:
        handles.append(layer.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True)))
        handles.append(layer.register_forward_hook(lambda *_: inside.__setitem__(0, False)))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            encoder(audio_signal=x, length=lengths)
    finally:
        for h in handles:
            h.remove()
    return total


def test_checkpointing_keeps_fewer_activations_and_only_in_training():
    plain, ckpt = encoders()
    x, lengths = inputs()
    torch.manual_seed(0)
    full = layer_saved_bytes(plain, x, lengths)
    torch.manual_seed(0)
    kept = layer_saved_bytes(ckpt, x, lengths)
    # Without checkpointing every layer keeps tens of activations; with it, the layer inputs are held by the
    # checkpoint itself and nothing inside a layer is kept.
    assert full > 1_000_000 and kept < 0.05 * full, (kept, full)
    # eval and no-grad forwards are plain forwards (nothing to recompute)
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        assert torch.equal(plain(audio_signal=x, length=lengths)[0], ckpt(audio_signal=x, length=lengths)[0])


def test_state_dict_and_parameter_count_unchanged_and_config_key():
    base = ["model.train_ds.manifest_filepath=null", "model.validation_ds.manifest_filepath=null"]
    torch.manual_seed(0)
    off = NESTModel.from_config(load_config(config_name="nest_tiny", overrides=base).model)
    cfg_on = load_config(config_name="nest_tiny", overrides=base + ["+model.encoder.activation_checkpointing=true"])
    torch.manual_seed(0)
    on = NESTModel.from_config(cfg_on.model)
    assert on.encoder.activation_checkpointing and not off.encoder.activation_checkpointing
    assert list(on.state_dict()) == list(off.state_dict())
    assert on.num_weights == off.num_weights
    assert all(torch.equal(a, b) for a, b in zip(on.state_dict().values(), off.state_dict().values()))
    # The .nemo config is NeMo's: our key is left out.
    nemo_cfg = nemo_model_config(cfg_on.model)
    assert "activation_checkpointing" not in nemo_cfg["encoder"]
    assert nemo_cfg["encoder"]["_target_"] == "nemo.collections.asr.modules.ConformerEncoder"
