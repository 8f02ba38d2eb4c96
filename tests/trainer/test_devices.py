"""The same global batch on 8 simulated devices and on 1 device gives the same losses."""

import pytest

from tests.trainer.launcher import run_launcher
from tests.trainer.tiny import STEP_FLAGS, TINY_VIT_FLAGS
from trainer.metrics import read_metrics


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    (),
    ("--config.mesh_shape.data=4", "--config.mesh_shape.fsdp=2",
     "--config.sharding.min_fsdp_size=64"),
], ids=["data-parallel", "fsdp"])
def test_eight_devices_match_one_device(tmp_path, digits_data_dir, extra):
    flags = (*STEP_FLAGS, *TINY_VIT_FLAGS, "--config.log_every_steps=1",
             f"--config.dataset.data_dir={digits_data_dir}")
    run_launcher("configs/vit_digits.py", str(tmp_path / "one"), *flags, devices=1)
    run_launcher("configs/vit_digits.py", str(tmp_path / "eight"), *flags, *extra, devices=8)
    one, eight = read_metrics(str(tmp_path / "one")), read_metrics(str(tmp_path / "eight"))
    assert [r["step"] for r in one] == [r["step"] for r in eight] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(one, eight, strict=True):
        assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-6)
        assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-4)
    assert one[-1]["eval/accuracy"] == pytest.approx(eight[-1]["eval/accuracy"], abs=1e-9)
