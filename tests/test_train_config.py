"""trainer.* / exp_manager.* validation: Lightning's and NeMo's meanings, and no key silently ignored."""

import pytest
from omegaconf import OmegaConf

from nest_ssl.checkpoint import format_checkpoint_name
from nest_ssl.config import ConfigError, load_config
from nest_ssl.train.distributed import plan_launch
from nest_ssl.train.trainer_config import (
    parse_devices,
    parse_exp_manager,
    parse_run_config,
    parse_trainer,
)


# Lightning 2.4's Trainer(...) arguments and their defaults (its signature, for the test that each is known).
LIGHTNING_DEFAULTS = {
    "accelerator": "auto", "strategy": "auto", "devices": "auto", "num_nodes": 1, "precision": None, "logger": None,
    "callbacks": None, "fast_dev_run": False, "max_epochs": None, "min_epochs": None, "max_steps": -1,
    "min_steps": None, "max_time": None, "limit_train_batches": None, "limit_val_batches": None,
    "limit_test_batches": None, "limit_predict_batches": None, "overfit_batches": 0.0, "val_check_interval": None,
    "check_val_every_n_epoch": 1, "num_sanity_val_steps": None, "log_every_n_steps": None,
    "enable_checkpointing": None, "enable_progress_bar": None, "enable_model_summary": None,
    "accumulate_grad_batches": 1, "gradient_clip_val": None, "gradient_clip_algorithm": None, "deterministic": None,
    "benchmark": None, "inference_mode": True, "use_distributed_sampler": True, "profiler": None,
    "detect_anomaly": False, "barebones": False, "plugins": None, "sync_batchnorm": False,
    "reload_dataloaders_every_n_epochs": 0, "default_root_dir": None,
}


def nest_cfg(*overrides):
    return load_config(
        config_name="nest_fast-conformer",
        overrides=["model.train_ds.manifest_filepath=a.json", "model.validation_ds.manifest_filepath=b.json", *overrides],
    )


def test_nest_yaml_parses_with_nemo_values():
    s = parse_run_config(nest_cfg())
    t, e = s.trainer, s.exp_manager
    assert (t.devices, t.num_nodes, t.max_epochs, t.max_steps, t.val_check_interval) == (-1, 1, -1, 500000, 2500)
    assert (t.strategy, t.precision, t.sync_batchnorm, t.log_every_n_steps, t.num_sanity_val_steps) == (
        "ddp", "32-true", True, 10, 0)
    assert t.gradient_clip_val == 0.0 and t.accumulate_grad_batches == 1 and t.check_val_every_n_epoch == 1
    assert e.resume_if_exists and e.resume_ignore_no_checkpoint and e.create_tensorboard_logger
    c = e.checkpoint
    assert (c.monitor, c.mode, c.save_top_k, c.always_save_nemo) == ("val_loss", "min", 1, True)
    assert c.filename == "SSL-NEST-FastConformer--{val_loss:.3f}-{step}"
    assert s.name == "SSL-NEST-FastConformer"


def test_unknown_trainer_key_names_the_nearest():
    with pytest.raises(ConfigError, match=r"trainer\.max_step.*did you mean 'trainer\.max_steps'"):
        parse_trainer({"max_step": 10})
    with pytest.raises(ConfigError, match=r"exp_manager\.resume_if_exist.*resume_if_exists"):
        parse_exp_manager({"resume_if_exist": True})
    with pytest.raises(ConfigError, match=r"checkpoint_callback_params\.every_n_train_step.*every_n_train_steps"):
        parse_exp_manager({"checkpoint_callback_params": {"every_n_train_step": 5}})
    with pytest.raises(ConfigError, match="top-level key 'trainr'.*did you mean 'trainer'"):
        parse_run_config(OmegaConf.create({"model": {}, "trainr": {}}))


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("strategy", "fsdp", "sharded training is not supported"),
        ("strategy", "ddp_spawn", "starts the processes itself"),
        ("precision", "64", "choose one of 32, 16"),
        ("precision", "bf16-true", "choose one of"),
        ("accelerator", "tpu", "choose auto, cpu or gpu"),
        ("max_time", "1 hour", "DD:HH:MM:SS"),
        ("max_time", {"hour": 1}, "days, hours, minutes, seconds"),
        ("callbacks", ["x"], "not supported"),
        ("limit_train_batches", 0.5, "give a number of batches"),
        ("val_check_interval", 1.5, r"fraction of an epoch in \(0, 1\]"),
        ("val_check_interval", 0, "must be >= 1"),
        ("accumulate_grad_batches", 0, "integer >= 1"),
        ("gradient_clip_val", -1, ">= 0"),
        ("devices", 0, "count >= 1"),
        ("default_root_dir", "/tmp/x", "exp_manager.exp_dir"),
    ],
)
def test_unsupported_trainer_values_fail_clearly(key, value, match):
    with pytest.raises(ConfigError, match=match):
        parse_trainer({key: value})


def test_lightning_value_forms():
    assert parse_trainer({"precision": 16}).precision == "16-mixed"
    assert parse_trainer({"precision": "bf16"}).precision == "bf16-mixed"
    assert parse_trainer({"precision": "32"}).precision == "32-true"
    assert parse_trainer({}).max_epochs == 1000  # Lightning: no max_steps and no max_epochs -> 1000 epochs
    assert parse_trainer({"max_steps": 5}).max_epochs == -1
    t = parse_trainer({"strategy": "ddp_find_unused_parameters_true"})
    assert t.find_unused_parameters and not parse_trainer({"strategy": "ddp"}).find_unused_parameters
    assert parse_trainer({"val_check_interval": 1.0}).val_check_interval == 1.0
    assert parse_trainer({"num_sanity_val_steps": None}).num_sanity_val_steps == 2
    assert parse_devices("0,1") == [0, 1] and parse_devices("3") == 3 and parse_devices(-1) == -1
    assert parse_devices([2]) == [2] and parse_devices("auto") == "auto"
    # every Lightning Trainer argument is known: its default passes
    t = parse_trainer(dict(LIGHTNING_DEFAULTS))
    assert (t.precision, t.log_every_n_steps, t.num_sanity_val_steps, t.val_check_interval) == ("32-true", 50, 2, 1.0)


def test_nemo_exp_manager_conflicts_and_switches():
    with pytest.raises(ConfigError, match="set trainer.enable_checkpointing=false"):
        parse_run_config(nest_cfg("trainer.enable_checkpointing=true"))
    with pytest.raises(ConfigError, match="set trainer.logger=false"):
        parse_run_config(nest_cfg("trainer.logger=true"))
    with pytest.raises(ConfigError, match="not available in nest-ssl"):
        parse_run_config(nest_cfg("exp_manager.create_wandb_logger=true"))
    with pytest.raises(ConfigError, match="always written"):
        parse_exp_manager({"checkpoint_callback_params": {"save_last": False}})
    with pytest.raises(ConfigError, match="EMA"):
        parse_exp_manager({"ema": {"enable": True}})
    with pytest.raises(ConfigError, match="downloads"):
        parse_run_config(nest_cfg("+init_from_pretrained_model=ssl_en_nest_large_v1.0"))
    e = parse_exp_manager({"max_time_per_run": "00:01:30:00", "checkpoint_callback_params": {"every_n_train_steps": 7}})
    assert e.max_time_per_run == 5400.0 and e.checkpoint.every_n_train_steps == 7
    # Lightning's own checkpointing when exp_manager's is off: newest checkpoint, no monitor
    s = parse_run_config(nest_cfg("trainer.enable_checkpointing=true", "exp_manager.create_checkpoint_callback=false"))
    assert s.exp_manager.create_checkpoint_callback and s.exp_manager.checkpoint.monitor is None


def test_nest_trainer_section():
    s = parse_run_config(nest_cfg("+nest_trainer.seed=7", "+nest_trainer.max_consecutive_nonfinite=3"))
    assert s.nest_trainer.seed == 7 and s.nest_trainer.max_consecutive_nonfinite == 3
    with pytest.raises(ConfigError, match="nest_trainer.sed.*nest_trainer.seed"):
        parse_run_config(nest_cfg("+nest_trainer.sed=7"))
    # NeMo's yaml has no nest_trainer section: the preemption deadline's default applies; 0 is allowed
    assert parse_run_config(nest_cfg()).nest_trainer.preemption.save_deadline_s == 20.0
    s = parse_run_config(nest_cfg("+nest_trainer.preemption.save_deadline_s=0"))
    assert s.nest_trainer.preemption.save_deadline_s == 0.0


def test_devices_on_a_cpu_machine(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="devices=-1 means every GPU"):
        plan_launch(parse_trainer({"devices": -1}))
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        plan_launch(parse_trainer({"accelerator": "gpu", "devices": 1}))
    p = plan_launch(parse_trainer({"accelerator": "cpu", "devices": 2}))
    assert (p.accelerator, p.world_size, p.use_ddp, p.under_launcher) == ("cpu", 2, True, False)
    assert not plan_launch(parse_trainer({"devices": "auto"})).use_ddp
    with pytest.raises(ConfigError, match="torchrun on every node"):
        plan_launch(parse_trainer({"accelerator": "cpu", "devices": 1, "num_nodes": 2}))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    p = plan_launch(parse_trainer({"accelerator": "cpu", "devices": 2, "num_nodes": 2}))
    assert p.under_launcher and p.world_size == 4
    with pytest.raises(ConfigError, match="torchrun started 2 processes"):
        plan_launch(parse_trainer({"accelerator": "cpu", "devices": 3, "num_nodes": 2}))


def test_checkpoint_names_follow_lightning():
    # Lightning's ModelCheckpoint.format_checkpoint_name with auto_insert_metric_name
    t = "SSL-NEST-FastConformer--{val_loss:.3f}-{step}"
    assert format_checkpoint_name(t, {"val_loss": 6.12345, "step": 2500}) == "SSL-NEST-FastConformer--val_loss=6.123-step=2500"
    assert format_checkpoint_name(t + "-last", {"step": 10}) == "SSL-NEST-FastConformer--val_loss=0.000-step=10-last"
    assert format_checkpoint_name("{epoch}-{step}", {"epoch": 2, "step": 7}, auto_insert_metric_name=False) == "2-7"
    assert format_checkpoint_name(None, {"epoch": 1, "step": 3}) == "epoch=1-step=3"


@pytest.mark.parametrize(
    "section,node,match",
    [
        ("trainer", {"max_steps": "8x"}, r"^trainer\.max_steps='8x': must be an integer$"),
        ("trainer", {"max_epochs": 2.5}, r"^trainer\.max_epochs=2\.5: must be an integer or null$"),
        ("trainer", {"enable_progress_bar": "maybe"}, r"enable_progress_bar='maybe': must be true, false or null"),
        ("trainer", [1], r"`trainer` must be a mapping"),
        ("exp_manager", {"checkpoint_callback_params": 5}, r"`exp_manager\.checkpoint_callback_params` must be a map"),
        ("exp_manager", {"files_to_copy": "a.txt"}, r"exp_manager\.files_to_copy='a\.txt': must be a list or null"),
        ("exp_manager", {"summary_writer_kwargs": 3}, r"summary_writer_kwargs=3: must be a mapping or null"),
        ("exp_manager", {"checkpoint_callback_params": {"mode": "best"}}, r"checkpoint_callback_params\.mode='best'"),
        ("nest_trainer", {"health": {"min_coverag": 0.2}}, r"did you mean 'nest_trainer\.health\.min_coverage'"),
        ("nest_trainer", {"health": {"floor_margin": "x"}}, r"nest_trainer\.health\.floor_margin='x': must be a number"),
        ("nest_trainer", {"seed": -1}, r"nest_trainer\.seed=-1: must be an integer >= 0"),
        ("nest_trainer", {"preemption": {"save_deadline_s": -5}},
         r"nest_trainer\.preemption\.save_deadline_s=-5\.0: must be a number of seconds >= 0"),
        ("nest_trainer", {"preemption": {"deadline": 5}}, r"did you mean 'nest_trainer\.preemption\.save_deadline_s'"),
    ],
)
def test_type_and_key_errors_name_the_key_and_value(section, node, match):
    cfg = {"model": {}, "trainer": {"enable_checkpointing": False}}
    cfg[section] = node  # a trainer section replaces the base one: its error comes first
    with pytest.raises(ConfigError, match=match):
        parse_run_config(OmegaConf.create(cfg))


def test_null_means_the_default_and_defaults_live_in_the_dataclasses():
    from nest_ssl.train.health import HealthSettings
    from nest_ssl.train.trainer_config import CheckpointSettings, TrainerSettings, parse_nest_trainer

    t = parse_trainer({"log_every_n_steps": None, "precision": None, "limit_val_batches": None})
    assert (t.log_every_n_steps, t.precision, t.limit_val_batches) == (TrainerSettings.log_every_n_steps, "32-true", 1.0)
    e = parse_exp_manager({"checkpoint_callback_params": None, "files_to_copy": None})
    assert e.checkpoint == CheckpointSettings() and e.files_to_copy == []
    assert parse_nest_trainer({"health": None}).health == HealthSettings()
    assert parse_nest_trainer(None).health == HealthSettings()
    assert parse_nest_trainer({"preemption": None}).preemption.save_deadline_s == 20.0
    assert parse_trainer({"max_steps": "12"}).max_steps == 12  # OmegaConf's conversion of a number given as text
