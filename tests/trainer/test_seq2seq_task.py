"""The seq2seq task's config boundary and its BLEU evaluation over several processes."""

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.trainer.launcher import REPO
from tests.trainer.tiny import tiny_seq2seq_config
from trainer.tasks import create_task


def test_synthetic_length_defaults_to_the_sources_max_len():
    config = tiny_seq2seq_config()
    del config.dataset.source_kwargs["max_len"]  # the source's default: 10 content tokens
    assert create_task(config).max_length == 10 + 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bleu_over_processes(num_processes: int, devices_per_process: int) -> list[dict]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
    port = _free_port()
    processes = [subprocess.Popen(
        [sys.executable, "-m", "tests.trainer.bleu_worker", str(index), str(num_processes),
         str(port)], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True) for index in range(num_processes)]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, output[-4000:]
    return [json.loads(output.split("BLEU ")[-1]) for output in outputs]


@pytest.mark.slow
def test_bleu_over_two_processes_equals_one_process():
    """Each host decodes its part of the global batch; the hypotheses and references are
    gathered in the same order (before: a ValueError gathering a global array)."""
    from tests.trainer import bleu_worker

    single = bleu_worker.generation_metrics()  # this process, all its devices
    two = _bleu_over_processes(2, 2)
    assert "bleu" in single
    assert two[0] == two[1] == single
