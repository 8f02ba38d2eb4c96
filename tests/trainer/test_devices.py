"""The same global batch on 8 simulated devices and on 1 device gives the same losses."""

import pytest

from tests.trainer.launcher import run_launcher
from tests.trainer.tiny import STEP_FLAGS, TINY_VIT_FLAGS
from trainer.metrics import read_metrics

LAYOUTS = {
    "data-parallel": (),
    "fsdp": ("--config.mesh_shape.data=4", "--config.mesh_shape.fsdp=2",
             "--config.sharding.min_fsdp_size=64"),
}


@pytest.mark.slow
def test_eight_devices_match_one_device(tmp_path, digits_data_dir):
    # One test for both layouts: they compare with the same one-device run, trained once.
    flags = (*STEP_FLAGS, *TINY_VIT_FLAGS, "--config.log_every_steps=1",
             f"--config.dataset.data_dir={digits_data_dir}")
    run_launcher("configs/vit_digits.py", str(tmp_path / "one"), *flags, devices=1)
    one = read_metrics(str(tmp_path / "one"))
    assert [r["step"] for r in one] == [1, 2, 3, 4, 5, 6]
    for layout, extra in LAYOUTS.items():
        run_launcher("configs/vit_digits.py", str(tmp_path / layout), *flags, *extra, devices=8)
        eight = read_metrics(str(tmp_path / layout))
        assert [r["step"] for r in eight] == [1, 2, 3, 4, 5, 6], layout
        for a, b in zip(one, eight, strict=True):
            assert a["train/loss"] == pytest.approx(b["train/loss"], rel=1e-5, abs=1e-6), layout
            assert a["train/grad_norm"] == pytest.approx(b["train/grad_norm"], rel=1e-4), layout
        assert one[-1]["eval/accuracy"] == pytest.approx(eight[-1]["eval/accuracy"],
                                                         abs=1e-9), layout
