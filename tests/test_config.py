"""Config loading: NeMo's keys and values, size variants, NeMo-style overrides, NeMo `_target_` mapping."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nest_ssl.config import DEFAULT_CONFIG_DIR, NEMO_TARGETS, ConfigError, load_config, resolve_target

CONF = DEFAULT_CONFIG_DIR


def nemo_yaml_text() -> str:
    """NeMo's own yaml: ours with every `_target_` spelled as NeMo spells it."""
    text = (CONF / "nest_fast-conformer.yaml").read_text()
    for nemo_path, ours in NEMO_TARGETS.items():
        text = text.replace(f"_target_: {ours}\n", f"_target_: {nemo_path}\n")
    assert "nest_ssl." not in text.split("exp_manager:")[0].replace("nest_ssl/config.py", "")
    return text


def test_reference_keys_and_values():
    cfg = load_config()
    m = cfg.model
    assert cfg.name == "SSL-NEST-FastConformer"
    assert (m.sample_rate, m.num_classes, m.num_books, m.code_dim, m.squeeze_single, m.mask_position) == (
        16000, 8192, 1, 16, False, "pre_conv")
    assert m.preprocessor.window_size == 0.025 and m.preprocessor.window_stride == 0.01
    assert m.preprocessor.dither == 1e-5 and m.preprocessor.pad_to == 16 and m.preprocessor.n_fft == 512
    assert (m.masking.block_size, m.masking.mask_prob, m.masking.feat_in) == (40, 0.01, 80)
    assert m.quantizer.combine_time_steps == 8 and m.quantizer.feat_in == 80 and m.quantizer.num_classes == 8192
    e = m.encoder
    assert (e.n_layers, e.d_model, e.n_heads, e.subsampling, e.subsampling_factor, e.subsampling_conv_channels) == (
        17, 512, 8, "dw_striding", 8, 256)
    assert (e.conv_kernel_size, e.xscaling, e.untie_biases, e.dropout, e.dropout_att, e.dropout_emb) == (
        9, True, True, 0.1, 0.1, 0.0)
    assert list(e.att_context_size) == [-1, -1]
    assert m.decoder.feat_in == 512 and m.loss.mask_threshold == 0.8
    assert m.optim.lr == 5.0 and list(m.optim.betas) == [0.9, 0.98] and m.optim.weight_decay == 1e-3
    assert m.optim.sched.warmup_steps == 25000 and m.optim.sched.min_lr == 1e-6 and m.optim.sched.d_model == 512
    t = cfg.trainer
    assert (t.devices, t.max_steps, t.val_check_interval, t.strategy, t.precision, t.sync_batchnorm) == (
        -1, 500000, 2500, "ddp", 32, True)
    assert cfg.exp_manager.name == "SSL-NEST-FastConformer"
    assert cfg.exp_manager.checkpoint_callback_params.filename == "SSL-NEST-FastConformer--{val_loss:.3f}-{step}"
    assert OmegaConf.is_missing(m.train_ds, "manifest_filepath")
    ba = m.train_ds.batch_augmentor
    assert (ba.prob, ba.noise_ratio, ba.min_r_noise, ba.max_r_noise, ba.min_mix_rate) == (0.5, 0.5, -5.0, 20.0, 0.5)


@pytest.mark.parametrize(
    "name, d_model, n_heads, n_layers, kernel, wd, xscaling, use_bias",
    [
        ("nest_small", 176, 4, 16, 9, 0.0, True, True),
        ("nest_medium", 256, 4, 16, 9, 1e-3, True, True),
        ("nest_large", 512, 8, 17, 9, 1e-3, True, True),
        ("nest_large_v1", 512, 8, 18, 9, 1e-3, True, True),
        ("nest_xlarge", 1024, 8, 24, 9, 1e-3, False, False),
        ("nest_xxlarge", 1024, 8, 42, 5, 1e-3, False, False),
    ],
)
def test_size_variants(name, d_model, n_heads, n_layers, kernel, wd, xscaling, use_bias):
    cfg = load_config(config_name=name)
    e = cfg.model.encoder
    assert (e.d_model, e.n_heads, e.n_layers, e.conv_kernel_size, e.xscaling, e.use_bias) == (
        d_model, n_heads, n_layers, kernel, xscaling, use_bias)
    assert cfg.model.optim.weight_decay == wd
    # interpolations follow the variant's d_model
    assert cfg.model.decoder.feat_in == d_model and cfg.model.optim.sched.d_model == d_model


def test_overrides_nemo_grammar():
    cfg = load_config(
        overrides=[
            "model.encoder.n_layers=3",
            "model.optim.betas=[0.9,0.999]",
            "+model.train_ds.batch_duration=120",
            "++trainer.max_steps=7",
            "++trainer.brand_new=1e-3",
            "~model.spec_augment",
            "model.train_ds.manifest_filepath=data/a.json,data/b.json",
            "model.validation_ds.noise_manifest=null",
        ]
    )
    assert cfg.model.encoder.n_layers == 3
    assert list(cfg.model.optim.betas) == [0.9, 0.999]
    assert cfg.model.train_ds.batch_duration == 120
    assert cfg.trainer.max_steps == 7 and cfg.trainer.brand_new == 1e-3
    assert "spec_augment" not in cfg.model
    assert cfg.model.train_ds.manifest_filepath == "data/a.json,data/b.json"
    assert cfg.model.validation_ds.noise_manifest is None


def test_override_interpolation_follows():
    cfg = load_config(overrides=["model.encoder.d_model=256", "model.encoder.subsampling_factor=4"])
    assert cfg.model.decoder.feat_in == 256 and cfg.model.quantizer.combine_time_steps == 4


@pytest.mark.parametrize(
    "override, nearest",
    [
        ("model.encoder.n_layer=3", "model.encoder.n_layers"),
        ("trainer.max_step=3", "trainer.max_steps"),
        ("model.optim.sched.warmup_step=3", "model.optim.sched.warmup_steps"),
        ("~model.encoder.dropoutt", "model.encoder.dropout"),
    ],
)
def test_unknown_key_names_nearest(override, nearest):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override])
    assert f"did you mean '{nearest}'" in str(err.value)


def test_add_existing_key_and_malformed_override():
    with pytest.raises(ConfigError, match="already exists"):
        load_config(overrides=["+model.encoder.n_layers=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["model.encoder.n_layers"])


def test_missing_config_lists_choices(tmp_path):
    with pytest.raises(ConfigError, match="nest_tiny"):
        load_config(config_name="nest_tinyy")


def test_nemo_yaml_loads_unchanged(tmp_path):
    (tmp_path / "nest_fast-conformer.yaml").write_text(nemo_yaml_text())
    cfg = load_config(config_path=tmp_path)
    assert cfg.model.encoder._target_ == "nemo.collections.asr.modules.ConformerEncoder"
    assert resolve_target(cfg.model.encoder._target_).__name__ == "ConformerEncoder"
    assert resolve_target(cfg.model.loss._target_).__name__ == "MultiMLMLoss"
    # a NeMo target given by its defining module's path maps by class name
    assert resolve_target("nemo.collections.asr.modules.conformer_encoder.ConformerEncoder").__name__ == "ConformerEncoder"
    with pytest.raises(ConfigError, match="no counterpart"):
        resolve_target("nemo.collections.asr.modules.ConvASREncoder")


def test_bad_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("model:\n  a: 1\n   b: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml:\d+"):
        load_config(config_path=tmp_path, config_name="broken")


def test_defaults_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("defaults:\n  - b\nx: 1\n")
    (tmp_path / "b.yaml").write_text("defaults:\n  - a\ny: 2\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(config_path=tmp_path, config_name="a")


def test_every_shipped_config_loads():
    names = sorted(p.stem for p in Path(CONF).glob("*.yaml"))
    assert "nest_tiny" in names and "nest_fast-conformer" in names
    for name in names:
        load_config(config_name=name)
