"""The offline default experiment (``make demo``) reaches its stated accuracy."""

import pytest

from configs import vit_digits
from trainer.train import train_and_evaluate


@pytest.mark.slow
def test_default_digits_experiment_reaches_97_percent(tmp_path, digits_data_dir):
    config = vit_digits.get_config()
    config.dataset.data_dir = digits_data_dir
    config.progress_bar = False
    summary = train_and_evaluate(config, str(tmp_path / "digits"))
    assert summary["final_eval"]["eval/accuracy"] >= 0.97, summary
