"""The tests' XLA flags (tests/xla_flags.py): LLVM's quickest compiles unless asked otherwise."""

import os

from tests import xla_flags


def test_this_process_and_the_ones_it_starts_compile_at_level_zero_unless_told_otherwise():
    expected = () if os.environ.get("VITKD_TEST_XLA_OPT") == "default" else (
        "--xla_backend_optimization_level=0",)
    assert xla_flags.FAST_COMPILE == expected
    levels = [flag for flag in os.environ["XLA_FLAGS"].split()
              if flag.startswith(xla_flags.OPT_LEVEL_FLAG)]
    if expected and levels != list(expected):  # conftest.py keeps a level the caller set
        assert len(levels) == 1, levels
    else:
        assert levels == list(expected)  # added by conftest.py
    assert xla_flags.xla_flags(2).split() == [
        "--xla_force_host_platform_device_count=2", *expected]
    assert xla_flags.xla_flags(1, fast_compile=False) == (
        "--xla_force_host_platform_device_count=1")


def test_a_callers_optimisation_level_is_kept():
    mine = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=2"
    assert xla_flags.with_fast_compile(mine) == mine
    assert xla_flags.with_fast_compile("").split() == list(xla_flags.FAST_COMPILE)
