"""Tiny versions of the shipped configs, for fast tests."""

from __future__ import annotations

from configs import seq2seq_synthetic, vit_digits

TINY_VIT = dict(hidden_size=32, num_layers=1, num_heads=2, mlp_dim=32, dropout_rate=0.0)
TINY_VIT_FLAGS = tuple(f"--config.model.{k}={v}" for k, v in TINY_VIT.items())
STEP_FLAGS = ("--config.num_train_steps=6", "--config.log_every_steps=2",
              "--config.eval_every_steps=3", "--config.checkpoint_every_steps=3",
              "--config.schedule.warmup_steps=2", "--config.batch_size=32",
              "--config.eval_batch_size=64", "--config.progress_bar=False")


def tiny_digits_config(data_dir: str, **overrides):
    config = vit_digits.get_config()
    for key, value in TINY_VIT.items():
        config.model[key] = value
    config.dataset.data_dir = data_dir
    config.num_train_steps = 6
    config.log_every_steps = 1
    config.eval_every_steps = 3
    config.checkpoint_every_steps = 2
    config.schedule.warmup_steps = 2
    config.batch_size = 32
    config.eval_batch_size = 64
    config.progress_bar = False
    config.async_checkpoints = False
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return config


def tiny_seq2seq_config(**overrides):
    config = seq2seq_synthetic.get_config("reverse")
    config.model.name = "micro"
    config.dataset.source_kwargs = dict(num_examples=256, min_len=2, max_len=6,
                                        vocab_size=16, seed=0)
    config.model.max_length = 12
    config.num_train_steps = 4
    config.log_every_steps = 2
    config.eval_every_steps = 4
    config.checkpoint_every_steps = 4
    config.schedule.warmup_steps = 2
    config.batch_size = 16
    config.eval_batch_size = 64
    config.progress_bar = False
    for key, value in overrides.items():
        config[key] = value
    return config
