"""NESTModel: NeMo's parameter counts and state-dict names, forward shapes, and the edge cases of real batches."""

import logging

import pytest
import torch

from nest_ssl.config import load_config
from nest_ssl.models import NESTModel

FROZEN = 640 * 16 + 8192 * 16 + 80  # quantizer projection + codebooks + mask vector: never trained


def build(config_name="nest_fast-conformer", overrides=(), device=None):
    cfg = load_config(config_name=config_name, overrides=overrides)
    if device is None:
        return NESTModel.from_config(cfg.model)
    with torch.device(device):
        return NESTModel.from_config(cfg.model)


def count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "config_name, total, trainable",
    [
        ("nest_fast-conformer", 113_106_000, 112_964_608),
        ("nest_large_v1", 119_418_448, 119_277_056),
        ("nest_small", 14_191_616, 14_191_616 - FROZEN),
        ("nest_medium", 28_375_376, 28_375_376 - FROZEN),
        ("nest_xlarge", 615_844_944, 615_844_944 - FROZEN),
        ("nest_xxlarge", 1_069_081_680, 1_069_081_680 - FROZEN),
    ],
)
def test_parameter_counts(config_name, total, trainable):
    model = build(config_name, device="meta")  # shapes only: no memory, no init cost
    assert count(model) == total
    assert model.num_weights == trainable


def test_state_dict_names_shapes_dtypes():
    model = build(device="meta")
    sd = model.state_dict()
    assert len(sd) == 699
    prefixes = []
    for key in sd:
        top = key.split(".")[0]
        if top not in prefixes:
            prefixes.append(top)
    assert prefixes == ["preprocessor", "encoder", "quantizer", "mask_processor", "decoder"]
    expect = {
        "preprocessor.featurizer.window": ((400,), torch.float32),
        "preprocessor.featurizer.fb": ((1, 80, 257), torch.float32),
        "encoder.pre_encode.conv.0.weight": ((256, 1, 3, 3), torch.float32),
        "encoder.pre_encode.conv.3.weight": ((256, 256, 1, 1), torch.float32),
        "encoder.pre_encode.out.weight": ((512, 2560), torch.float32),
        "encoder.layers.16.self_attn.linear_pos.weight": ((512, 512), torch.float32),
        "encoder.layers.0.self_attn.pos_bias_u": ((8, 64), torch.float32),
        "encoder.layers.0.conv.pointwise_conv1.weight": ((1024, 512, 1), torch.float32),
        "encoder.layers.0.conv.depthwise_conv.weight": ((512, 1, 9), torch.float32),
        "encoder.layers.0.conv.batch_norm.num_batches_tracked": ((), torch.int64),
        "encoder.layers.0.feed_forward1.linear1.weight": ((2048, 512), torch.float32),
        "encoder.layers.0.norm_out.weight": ((512,), torch.float32),
        "quantizer.proj.weight": ((16, 640), torch.float32),
        "quantizer.codebooks": ((1, 8192, 16), torch.float64),
        "mask_processor.mask_embedding": ((80,), torch.float32),
        "decoder.decoder_layers.0.weight": ((8192, 512, 1), torch.float32),
        "decoder.decoder_layers.0.bias": ((8192,), torch.float32),
    }
    for key, (shape, dtype) in expect.items():
        assert tuple(sd[key].shape) == shape, key
        assert sd[key].dtype == dtype, key
    assert "encoder.layers.0.self_attn.linear_pos.bias" not in sd
    assert not any("pos_enc.pe" in k for k in sd)
    assert len([k for k in sd if k.startswith("encoder.layers.0.")]) == 40
    assert len(build("nest_large_v1", device="meta").state_dict()) == 739


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build("nest_tiny")


def batch_of(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths, dtype=torch.int64)
    audio = torch.zeros(len(lengths), int(lengths.max()))
    for i, n in enumerate(lengths.tolist()):
        t = torch.arange(n) / 16000
        audio[i, :n] = 0.3 * torch.sin(2 * torch.pi * (150 + 50 * i) * t) + 0.05 * torch.randn(n, generator=g)
    noisy = audio + 0.02 * torch.randn(audio.shape, generator=g) * (torch.arange(audio.shape[1]) < lengths[:, None])
    return audio, lengths, noisy


def test_forward_shapes_like_nemo(tiny):
    tiny.eval()
    audio, lengths, noisy = batch_of([48000, 40123, 16000])
    log_probs, encoded_len, masks, tokens = tiny(
        input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy, noisy_input_signal_length=lengths
    )
    frames = lengths // 160  # NeMo 2.7.3 feature length
    t_pad = 16 * -(-(1 + 48000 // 160) // 16)
    assert masks.shape == (3, 80, t_pad) and masks.sum() == 0
    assert log_probs.shape == (3, t_pad // 8, 1024, 1)
    assert tokens.shape == (3, t_pad // 8, 1) and tokens.dtype == torch.int64
    assert torch.equal(encoded_len, -(-frames // 8))
    assert torch.allclose(log_probs.exp().sum(2), torch.ones(()), atol=1e-4)


def test_training_output_masks_only_valid_frames(tiny):
    tiny.train()
    torch.manual_seed(3)
    audio, lengths, noisy = batch_of([80000, 33333])  # lengths not divisible by the hop or by 8 frames
    out = tiny.training_output(
        type("B", (), dict(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths))
    )
    frames = lengths // 160
    for i in range(2):
        assert out.masks[i, :, frames[i]:].sum() == 0  # padding is never masked
    assert out.num_masked_tokens > 0 and not out.empty_mask
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert all(
        p.grad is not None for n, p in tiny.named_parameters() if p.requires_grad and "batch_norm" not in n
    )
    tiny.zero_grad()


def test_no_masked_token_gives_flagged_zero_loss(tiny):
    tiny.train()
    # 0.4 s: the short-utterance rule masks only frames [0, 8): one token's 8 frames, and the mask threshold needs
    # more than 80% of a token's frames; craft the case directly instead with masking switched off.
    audio, lengths, noisy = batch_of([6400, 6400])
    batch = type("B", (), dict(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths))
    out = tiny.training_output(batch, apply_mask=False)
    assert out.empty_mask and out.num_masked_tokens == 0
    assert out.loss.item() == 0.0 and torch.isfinite(out.loss)
    out.loss.backward()  # still part of the graph: the trainer can step (a no-op) without special cases
    tiny.zero_grad()


def test_shorter_than_one_token_and_batch_of_one(tiny):
    tiny.train()
    audio, lengths, noisy = batch_of([1000])  # 6 feature frames: less than one 8-frame token
    batch = type("B", (), dict(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths))
    out = tiny.training_output(batch)
    assert out.encoded_len.tolist() == [1]
    assert torch.isfinite(out.loss)
    assert out.masks[0, :, 6:].sum() == 0


def test_sixty_second_utterance(tiny):
    tiny.eval()
    audio, lengths, noisy = batch_of([60 * 16000, 16000])
    with torch.no_grad():
        log_probs, encoded_len, masks, tokens = tiny(
            input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy,
            noisy_input_signal_length=lengths, apply_mask=True,
        )
    assert encoded_len.tolist() == [750, 13]
    assert torch.isfinite(log_probs).all()


def test_legacy_decoder_ssl_keys_are_dropped(tiny, caplog):
    sd = dict(tiny.state_dict())
    sd["decoder_ssl.decoder_layers.0.weight"] = torch.zeros(3)
    sd["decoder_ssl.decoder_layers.0.bias"] = torch.zeros(3)
    # Listen on the model's own logger: an in-process training run elsewhere in the suite stops nest_ssl's
    # records from propagating to the root logger that caplog watches by default.
    model_log = logging.getLogger("nest_ssl.models.nest")
    model_log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="nest_ssl.models.nest"):
            tiny.load_state_dict(sd, strict=True)
    finally:
        model_log.removeHandler(caplog.handler)
    assert "decoder_ssl" in caplog.text
    with pytest.raises(RuntimeError):
        tiny.load_state_dict({**sd, "encoder.bogus": torch.zeros(1)}, strict=True)


def test_from_plain_dict_and_post_conv():
    cfg = load_config(config_name="nest_tiny", overrides=["model.mask_position=post_conv"])
    from omegaconf import OmegaConf

    model = NESTModel.from_config(OmegaConf.to_container(cfg.model, resolve=True))
    assert model.cfg.masking.block_size == 5 and model.cfg.loss.combine_time_steps == 1
    assert "pre_encoder.masking.mask_embedding" in model.state_dict()
    model.train()
    audio, lengths, noisy = batch_of([64000, 48000])
    out = model.training_output(
        type("B", (), dict(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths))
    )
    assert out.masks.shape[1] == 96 and torch.isfinite(out.loss)


def test_builds_from_nemo_yaml_unchanged(tmp_path):
    from test_config import nemo_yaml_text

    (tmp_path / "nemo.yaml").write_text(nemo_yaml_text())
    cfg = load_config(config_path=tmp_path, config_name="nemo")
    assert cfg.model.encoder._target_.startswith("nemo.")
    with torch.device("meta"):
        model = NESTModel.from_config(cfg.model)
    assert count(model) == 113_106_000 and type(model.encoder).__module__ == "nest_ssl.modules.conformer"


def test_batch_with_every_cut_rejected(tiny):
    tiny.train()
    empty = torch.zeros(0, 0)
    lengths = torch.zeros(0, dtype=torch.int64)
    out = tiny.training_output(type("B", (), dict(audio=empty, audio_len=lengths, noisy_audio=empty,
                                                  noisy_audio_len=lengths)))
    assert out.empty_mask and out.loss.item() == 0.0 and out.num_tokens == 0
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in tiny.parameters() if p.requires_grad)
    tiny.zero_grad()


def test_training_output_loss_and_gradients_equal_nemos_selected_nll(tiny):
    """training_output weights the masked tokens instead of selecting them (no host read); loss and gradients are
    those of NeMo's nll_loss over log_probs[selected] after forward()."""
    tiny.train()
    for m in tiny.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    tiny.preprocessor.featurizer.dither = 0.0
    audio, lengths, noisy = batch_of([64000, 41000, 30000])
    batch = type("B", (), dict(audio=audio, audio_len=lengths, noisy_audio=noisy, noisy_audio_len=lengths))
    torch.manual_seed(5)
    out = tiny.training_output(batch)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in tiny.named_parameters() if p.grad is not None}
    tiny.zero_grad()
    torch.manual_seed(5)
    log_probs, enc_len, masks, tokens = tiny(input_signal=audio, input_signal_length=lengths, noisy_input_signal=noisy,
                                             noisy_input_signal_length=lengths, apply_mask=True)
    selected = tiny.loss.token_mask(masks)
    ref = torch.nn.functional.nll_loss(log_probs[..., 0][selected], tokens[:, : selected.shape[1], 0][selected])
    ref.backward()
    assert torch.equal(masks, out.masks) and torch.equal(selected, out.selected) and out.num_masked_tokens > 0
    assert out.num_masked_tokens == selected.sum() and not out.empty_mask
    assert out.log_probs.shape == (3, selected.shape[1], 1024, 1)
    assert torch.equal(out.valid.sum(1), enc_len) and out.num_tokens == enc_len.sum()
    assert torch.allclose(out.loss, ref, rtol=1e-6)
    for n, p in tiny.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads[n], p.grad, rtol=1e-4, atol=1e-7), n
    tiny.zero_grad()
