"""Huge pages for XLA:CPU's per-call buffers, set by the launcher and the benchmarks.

XLA:CPU allocates an executable's temporaries as one block per call (1.7 GB for a ViT-Ti/16
training step at batch 32). glibc's malloc serves a block that large with a fresh ``mmap``
and gives it back with ``munmap``, so every step faults the whole block in again, 4 KB page
by 4 KB page: measured on this project's 2-core CPU, 468k page faults and 2 s of kernel time
per 5.5 s step. With the glibc tunable ``glibc.malloc.hugetlb=1`` malloc asks for transparent
huge pages on those mappings (``madvise``): 2 MB pages, ~1.4k faults, 0.4 s of kernel time,
a 4.3 s step (``python -m benchmarks.vit_vs_timm`` measures the effect on both sides).

glibc reads its tunables once, when the process starts, so ``reexec_with_huge_pages`` starts
the same command again with the tunable added to ``GLIBC_TUNABLES`` (the process keeps its
PID). Nothing happens where it cannot help or is not wanted: not Linux with glibc, the
kernel's transparent huge pages set to ``never``, the tunable already present, or
``VITKD_HUGE_PAGES=0`` in the environment.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
OPT_OUT = "VITKD_HUGE_PAGES"


def _transparent_huge_pages_available(setting_file: str = THP_SETTING) -> bool:
    """True unless the kernel has transparent huge pages off (``[never]``) or lacks them."""
    try:
        with open(setting_file) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def tunables_with_huge_pages(environ: Mapping[str, str], *, is_glibc: bool,
                             thp_available: bool) -> str | None:
    """The ``GLIBC_TUNABLES`` value to restart with, or None to keep the process as it is."""
    current = environ.get("GLIBC_TUNABLES", "")
    if (environ.get(OPT_OUT) == "0" or not is_glibc or not thp_available
            or TUNABLE in current):
        return None
    return f"{current}:{TUNABLE}=1" if current else f"{TUNABLE}=1"


def restart_tunables(environ: Mapping[str, str] | None = None) -> str | None:
    """The ``GLIBC_TUNABLES`` value this machine's process would restart with, or None when
    ``reexec_with_huge_pages`` leaves it as it is (``environ`` defaults to ``os.environ``)."""
    return tunables_with_huge_pages(
        os.environ if environ is None else environ,
        is_glibc=sys.platform == "linux" and platform.libc_ver()[0] == "glibc",
        thp_available=_transparent_huge_pages_available(),
    )


def reexec_with_huge_pages() -> None:
    """Replace this process by the same command with ``glibc.malloc.hugetlb=1`` (see the
    module docstring), or return at once where that does not apply.

    Call it first thing in a ``__main__`` entry point, before any work: the command restarts
    from the beginning (``sys.orig_argv``).
    """
    tunables = restart_tunables()
    if tunables is None:
        return
    environ = dict(os.environ, GLIBC_TUNABLES=tunables)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
    except OSError:
        return  # Could not restart: carry on with 4 KB pages.
