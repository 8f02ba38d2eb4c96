"""One run per workdir: an exclusive ``flock`` on ``WORKDIR/.lock`` held for the whole run.

The kernel releases the lock when the process ends in any way (SIGKILL included), so a
preempted run never leaves a stale lock behind, while a second run started on the same workdir
at the same time is refused before it can touch the first one's checkpoints.
"""

from __future__ import annotations

import fcntl
import os
import socket


class WorkdirLockedError(RuntimeError):
    """Another process is training in this workdir."""


class WorkdirLock:
    def __init__(self, workdir: str) -> None:
        self.path = os.path.join(workdir, ".lock")
        self._file = None

    def __enter__(self) -> WorkdirLock:
        self._file = open(self.path, "a+")  # noqa: SIM115 - held open for the run
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            owner = self._file.read().strip() or "another process"
            self._file.close()
            raise WorkdirLockedError(
                f"workdir {os.path.dirname(self.path)!r} is in use by {owner}; two runs must "
                "not share a workdir (wait for it to finish, or use another --workdir)"
            ) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
