"""The WMT14 config for a few steps on offline random data, through the real TFDS path."""

import pytest

from input_pipeline.fake_data import build_fake_dataset
from tests.trainer.launcher import run_launcher
from trainer.metrics import read_metrics


@pytest.mark.slow
def test_wmt14_base_config_runs_on_mock_data(tmp_path):
    data_dir = build_fake_dataset("wmt14_translate/de-en", str(tmp_path / "tfds"),
                                  {"train": 64, "test": 16})
    workdir = str(tmp_path / "run")
    run_launcher(
        "configs/transformer_wmt14.py", workdir,
        f"--config.dataset.data_dir={data_dir}",
        f"--config.dataset.vocab_path={tmp_path / 'spm.model'}",
        "--config.dataset.vocab_size=64", "--config.model.vocab_size=64",
        "--config.model.name=micro", "--config.model.max_length=32",
        "--config.dataset.max_length=32", "--config.batch_size=16",
        "--config.eval_batch_size=16", "--config.num_train_steps=3",
        "--config.log_every_steps=1", "--config.eval_every_steps=3",
        "--config.checkpoint_every_steps=1", "--config.schedule.warmup_steps=2",
        "--config.mixed_precision=False", "--config.progress_bar=False",
        "--config.bleu_eval_batches=1")
    records = read_metrics(workdir)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert {"eval/token_accuracy", "eval/exact_match", "eval/loss", "eval/bleu"} <= set(
        records[-1])
    assert 0.0 <= records[-1]["eval/bleu"] <= 100.0
    # The config averages its last 5 checkpoints; this run has 3 (one per step).
    assert records[-1]["eval_averaged/num_checkpoints"] == 3
    assert 0.0 <= records[-1]["eval_averaged/bleu"] <= 100.0
    assert (tmp_path / "spm.model").exists()


def test_the_big_config_is_the_papers_big_model_with_its_own_recipe():
    """``transformer_wmt14.py:big``: Table 3's big row (d_model 1024, 16 heads, d_ff 4096,
    dropout 0.3, 300k steps), the learning rate of §5.3 for d_model 1024, the last 20
    checkpoints averaged (§6.1); base keeps its own values."""
    import jax
    import jax.numpy as jnp

    from configs import transformer_wmt14
    from trainer import config_validation
    from trainer.tasks.seq2seq import build_transformer

    expected = {"base": (512, 8, 2048, 0.1, 100_000, 5), "big": (1024, 16, 4096, 0.3, 300_000, 20)}
    for size, (d_model, heads, d_ff, dropout, steps, averaged) in expected.items():
        config = transformer_wmt14.get_config(size)
        config_validation.validate(config)
        model = build_transformer(config.model, config.model.vocab_size, jnp.float32)
        assert (model.emb_dim, model.num_heads, model.mlp_dim, model.dropout_rate) == (
            d_model, heads, d_ff, dropout)
        assert config.num_train_steps == steps
        assert config.optimizer.learning_rate == pytest.approx(d_model**-0.5 * 4000**-0.5)
        assert config.average_last_checkpoints == config.keep_checkpoints == averaged
        assert config.num_train_steps % config.checkpoint_every_steps == 0
        assert config.bleu_extra_length == 50  # §6.1: input length + 50
    x = jnp.zeros((1, 4), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, x))  # the big model
    assert sum(leaf.size for leaf in jax.tree.leaves(shapes)) == 209_125_376
    with pytest.raises(ValueError, match="'huge' is not one of \\('base', 'big'\\)"):
        transformer_wmt14.get_config("huge")


@pytest.mark.parametrize("extra_length", [-1, 2.5, True])
def test_a_bad_bleu_extra_length_is_named_when_the_task_is_built(extra_length):
    from tests.trainer.tiny import tiny_seq2seq_config
    from trainer.tasks import create_task

    with pytest.raises(ValueError, match=rf"config.bleu_extra_length={extra_length!r} must be "
                                         "an integer >= 0"):
        create_task(tiny_seq2seq_config(bleu_extra_length=extra_length))
