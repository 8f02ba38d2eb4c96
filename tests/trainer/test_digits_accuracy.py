"""The offline default experiment (``make demo``) reaches its stated accuracy."""

import json
import os

import pytest

from configs import vit_digits
from tests.trainer.launcher import run_launcher


@pytest.mark.slow
def test_default_digits_experiment_reaches_97_percent(tmp_path, digits_data_dir):
    # `make demo`'s command (with the test's data_dir, no progress bar): the launcher as a
    # user runs it (its restart with huge pages, its compiler options) on one CPU device, as
    # on a fresh machine, rather than on the test process's 8 simulated ones (slower on 2
    # cores; tests/trainer/test_devices.py checks that 8 devices train as one does), compiled
    # with XLA's defaults (its 1,500 steps run longer than they compile; tests/xla_flags.py).
    workdir = str(tmp_path / "vit_digits")
    run_launcher("configs/vit_digits.py", workdir, f"--config.dataset.data_dir={digits_data_dir}",
                 "--config.progress_bar=False", devices=1, timeout=1500, fast_compile=False)
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["step"] == vit_digits.get_config().num_train_steps, summary
    assert summary["final_eval"]["eval/accuracy"] >= 0.97, summary
