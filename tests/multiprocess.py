"""Runs the processes of one multi-process JAX job on this machine (coordinator on 127.0.0.1)
for a test: a failed process stops the job, a coordinator port taken meanwhile is retried."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence

# What a process 0 prints when the port was taken between ``_free_port`` closing it and the
# coordinator binding it: JAX's coordinator (gRPC), which then dies with SIGSEGV, and the
# launcher's own check before it (``trainer.partitioning._check_coordinator_address``).
_PORT_TAKEN = ("Failed to add port to server", "is already in use on this machine")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_once(commands: Sequence[Sequence[str]], env: dict, cwd: str,
              timeout: float) -> list[tuple[int, str, bool]]:
    """``[(returncode, output, killed here)]`` of the commands run together."""
    with tempfile.TemporaryDirectory() as logs:
        paths = [os.path.join(logs, f"{index}.log") for index in range(len(commands))]
        processes = []
        for command, path in zip(commands, paths, strict=True):
            with open(path, "w") as log:  # a file, not a pipe: no process blocks on output
                processes.append(subprocess.Popen(list(command), cwd=cwd, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        killed, failed = [False] * len(processes), False
        # A process that fails leaves the others waiting minutes for it (the coordinator's
        # initialisation timeout is 5 minutes): they are stopped as soon as one fails.
        while None in (codes := [p.poll() for p in processes]):  # polls every process
            failed = any(code not in (None, 0) for code in codes)
            timed_out = time.monotonic() > deadline
            if failed or timed_out:
                for index, process in enumerate(processes):
                    if process.poll() is None:
                        process.kill()
                        killed[index] = True
                for process in processes:
                    process.wait()
                break
            time.sleep(0.2)
        results = []
        for process, path, was_killed in zip(processes, paths, killed, strict=True):
            with open(path) as log:
                output = log.read()
            if was_killed:
                output += ("\n[killed after another process failed]" if failed
                           else f"\n[killed after {timeout:.0f} s]")
            results.append((process.returncode, output, was_killed))
        return results


def run_processes(make_commands: Callable[[int], Sequence[Sequence[str]]], *, env: dict,
                  cwd: str, timeout: float, attempts: int = 3) -> list[str]:
    """The outputs (stdout and stderr) of the commands ``make_commands(port)``, one per
    process, process 0 first, run together; ``port`` is a free local port for the coordinator.

    Raises AssertionError with the output of the first process that failed. When one process
    fails or ``timeout`` seconds pass, the others are killed rather than left waiting for it.
    A port taken by another program before the coordinator could listen on it (another test's
    job, an outgoing connection) is not the test's failure: the job is started again on
    another port, up to ``attempts`` times.
    """
    for _ in range(attempts):
        results = _run_once(make_commands(_free_port()), env, cwd, timeout)
        if not (results[0][0] != 0 and any(text in results[0][1] for text in _PORT_TAKEN)):
            break
    # The process that failed first, rather than one killed because it had.
    failures = sorted((killed, index) for index, (returncode, _, killed) in enumerate(results)
                      if returncode != 0)
    if failures:
        index = failures[0][1]
        returncode, output, _ = results[index]
        raise AssertionError(f"process {index} of {len(results)} exited with {returncode}:"
                             f"\n{output[-4000:]}")
    return [output for _, output, _ in results]
