"""The helper that runs the multi-process tests' jobs: a failed process stops the job at once,
a taken coordinator port is retried, a hung job is killed at its timeout."""

import socket
import sys
import time

import pytest

from tests import multiprocess
from tests.trainer.launcher import REPO

ENV = {"PATH": "/usr/bin:/bin"}


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_failed_process_stops_the_others_at_once():
    start = time.monotonic()
    with pytest.raises(AssertionError, match="process 1 of 2 exited with 3:\nbroken"):
        multiprocess.run_processes(lambda port: [
            _python("import time; time.sleep(60)"),
            _python("print('broken'); raise SystemExit(3)")], env=ENV, cwd=".", timeout=50)
    assert time.monotonic() - start < 30


def test_any_other_failure_of_process_zero_is_not_retried():
    calls = []
    with pytest.raises(AssertionError, match="process 0 of 1 exited with 1"):
        multiprocess.run_processes(
            lambda port: calls.append(port) or [_python("raise SystemExit(1)")],
            env=ENV, cwd=".", timeout=50)
    assert len(calls) == 1


def test_a_job_past_its_timeout_is_killed_and_says_so():
    with pytest.raises(AssertionError, match=r"exited with -9:\nstarted\n\n\[killed after 2 s\]"):
        multiprocess.run_processes(lambda port: [
            _python("print('started', flush=True); import time; time.sleep(60)")],
            env=ENV, cwd=".", timeout=2)


_JAX_JOB = """
import sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]),
                           initialization_timeout=60)
print("process", jax.process_index(), "of", jax.process_count())
"""

# The launcher's start-up, which refuses a taken port itself before JAX would die on it.
_LAUNCHER_JOB = """
import sys
import jax
from trainer import partitioning
partitioning.initialize_distributed(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))
print("process", jax.process_index(), "of", jax.process_count())
"""


@pytest.mark.parametrize("job", [_JAX_JOB, _LAUNCHER_JOB], ids=["jax", "launcher"])
def test_a_job_whose_coordinator_port_is_taken_runs_again_on_another(monkeypatch, job):
    """JAX's coordinator dies (SIGSEGV) on a port another program holds, and the launcher
    refuses it first; either prints one of the ``_PORT_TAKEN`` texts (a job that did not would
    fail here), and the workers would otherwise wait minutes for a coordinator."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = [taken.getsockname()[1], multiprocess._free_port()]
        monkeypatch.setattr(multiprocess, "_free_port", lambda: ports.pop(0))
        outputs = multiprocess.run_processes(lambda port: [
            [sys.executable, "-c", job, str(port), str(index)] for index in range(2)],
            env={**ENV, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}, cwd=REPO, timeout=120)
    assert ports == []
    assert ["process 0 of 2", "process 1 of 2"] == [o.strip().splitlines()[-1] for o in outputs]
