"""The launcher's config checks: each bad field named with its value, and the backend hints."""

import pytest

from configs import vit_digits
from trainer import config_validation


def test_the_demo_config_passes():
    config_validation.validate(vit_digits.get_config())


@pytest.mark.parametrize("field, value, message", [
    ("batch_size", 0, "config.batch_size=0 must be a positive integer"),
    ("log_every_steps", True, "config.log_every_steps=True must be a positive integer"),
    ("label_smoothing", 1.0, "config.label_smoothing=1.0 must be in [0, 1)"),
    ("stop_after_step", 10**9, "config.stop_after_step=1000000000 must be in [1, num_train_steps="),
    ("optimizer.accum_steps", 0, "config.optimizer.accum_steps=0 must be an integer >= 1"),
    ("optimizer.accum_steps", -1, "config.optimizer.accum_steps=-1 must be an integer >= 1"),
    ("optimizer.accum_steps", 3,
     "config.optimizer.accum_steps=3 must divide config.batch_size=128"),
    ("optimizer.weight_decay", -0.1, "config.optimizer.weight_decay=-0.1 must be a number >= 0"),
    ("mixup.mixup_alpha", -1.0, "config.mixup.mixup_alpha=-1.0 must be a number >= 0"),
    ("mixup.cutmix_alpha", -0.5, "config.mixup.cutmix_alpha=-0.5 must be a number >= 0"),
    ("mixup.switch_prob", 1.5, "config.mixup.switch_prob=1.5 must be in [0, 1]"),
    ("mixup.switch_prob", -0.1, "config.mixup.switch_prob=-0.1 must be in [0, 1]"),
    ("seed", -1, "config.seed=-1 must be an integer >= 0"),
    # The loader's shuffle refuses seeds from 2**32 on, without naming config.seed.
    ("seed", 2**32, "config.seed=4294967296 must be an integer >= 0 and < 2**32"),
    # A negative clip norm reverses every update (optax scales by norm_c / norm < 0).
    ("optimizer.grad_clip_norm", -1.0,
     "config.optimizer.grad_clip_norm=-1.0 must be a number >= 0 (0 or None: no clipping)"),
    ("optimizer.grad_clip_norm", float("nan"),
     "config.optimizer.grad_clip_norm=nan must be a number >= 0"),
    ("aug_repeats", -1, "config.aug_repeats=-1 must be an integer >= 0"),
    # Older checkpoints than keep_checkpoints are deleted before the final step's average.
    ("average_last_checkpoints", 4,
     "config.average_last_checkpoints=4 must be an integer in [1, config.keep_checkpoints=3]"),
    ("average_last_checkpoints", 0, "config.average_last_checkpoints=0 must be an integer in"),
    # A decay of 1 never moves the average; above 1 or below 0 it diverges.
    ("ema_decay", 1.0, "config.ema_decay=1.0 must be a number in [0, 1)"),
    ("ema_decay", -0.5, "config.ema_decay=-0.5 must be a number in [0, 1)"),
    # NaN passes every "x < 0" check; each of these made the first update NaN silently.
    ("optimizer.learning_rate", float("nan"), "config.optimizer.learning_rate=nan must be > 0"),
    ("optimizer.weight_decay", float("nan"),
     "config.optimizer.weight_decay=nan must be a number >= 0"),
    ("mixup.mixup_alpha", float("inf"), "config.mixup.mixup_alpha=inf must be a number >= 0"),
    ("schedule.end_learning_rate_factor", float("nan"),
     "config.schedule.end_learning_rate_factor=nan must be a number >= 0"),
    ("optimizer.name", "lamb", "config.optimizer.name='lamb' is not supported; expected one of"),
    ("schedule.name", "poly", "config.schedule.name='poly' is not supported; expected one of"),
    ("schedule.warmup_steps", -5, "config.schedule.warmup_steps=-5 must be an integer >= 0"),
    ("schedule.warmup_steps", 10**6,
     "config.schedule.warmup_steps=1000000 must be in [0, num_train_steps="),
    ("schedule.end_learning_rate_factor", -0.5,
     "config.schedule.end_learning_rate_factor=-0.5 must be a number >= 0"),
])
def test_a_bad_field_is_named_with_its_value(field, value, message):
    config = vit_digits.get_config()
    *parents, name = field.split(".")
    section = config
    for parent in parents:
        section = section[parent]
    section[name] = value
    with pytest.raises(ValueError) as error:
        config_validation.validate(config)
    assert message in str(error.value)


def test_accumulation_that_divides_the_batch_and_no_mixup_pass():
    config = vit_digits.get_config()
    config.optimizer.accum_steps = 8  # batch_size 128
    config.mixup.mixup_alpha = 0.0
    config.mixup.switch_prob = 1.0
    config_validation.validate(config)


@pytest.mark.parametrize("grad_clip_norm", [None, 0, 0.0, 1, 0.5])
def test_clipping_off_or_a_non_negative_norm_and_the_largest_seed_pass(grad_clip_norm):
    config = vit_digits.get_config()
    # None and 0 both mean no clipping in optimizers.make_optimizer.
    config.optimizer.grad_clip_norm = grad_clip_norm
    config.seed = 2**32 - 1
    config_validation.validate(config)


def test_a_missing_field_and_a_bad_learning_rate_are_named():
    config = vit_digits.get_config()
    config.optimizer.learning_rate = -1.0
    with pytest.raises(ValueError, match=r"config.optimizer.learning_rate=-1.0 must be > 0"):
        config_validation.validate(config)
    del config["eval_every_steps"]
    with pytest.raises(ValueError, match=r"missing the field\(s\) \['eval_every_steps'\]"):
        config_validation.validate(config)


def test_remat_without_scan_layers_is_flagged_on_the_cpu_only():
    config = vit_digits.get_config()
    assert config_validation.backend_warnings(config, "cpu") == []
    config.model.remat_policy = "full"
    (warning,) = config_validation.backend_warnings(config, "cpu")
    assert "remat_policy='full'" in warning and "scan_layers=True" in warning
    assert config_validation.backend_warnings(config, "gpu") == []
    config.model.scan_layers = True
    assert config_validation.backend_warnings(config, "cpu") == []
