"""The file system: a full disk fails the save loudly and keeps the last good checkpoint; a
run writes nothing outside its workdir."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.trainer.launcher import REPO
from tests.trainer.tiny import STEP_FLAGS, TINY_VIT_FLAGS
from tests.xla_flags import xla_flags
from trainer.metrics import read_metrics

CONFIG = "configs/vit_digits.py"


def _launcher_command(workdir: str, data_dir: str, steps: int) -> list[str]:
    flags = [f for f in STEP_FLAGS if not f.startswith("--config.num_train_steps")]
    return [sys.executable, "-m", "trainer.main", f"--config={os.path.join(REPO, CONFIG)}",
            f"--workdir={workdir}", *TINY_VIT_FLAGS, *flags,
            f"--config.num_train_steps={steps}", f"--config.dataset.data_dir={data_dir}"]


def _can_mount_tmpfs() -> bool:
    """A private mount namespace with a small tmpfs: root, or unprivileged user namespaces."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="cannot mount a private tmpfs here")
def test_full_disk_fails_the_save_clearly_and_keeps_the_last_good_checkpoint(
        tmp_path, digits_data_dir):
    # The workdir lives on a 16 MB tmpfs mounted in a private mount namespace (nothing leaks to
    # the host). Run 1 trains 6 steps and checkpoints at 3 and 6; then the disk is filled to
    # its last 8 KB and run 2 asks for 12 steps: its first save (step 9) must fail naming the
    # checkpoint and ENOSPC, and keep 3 and 6. Run 3, after space is freed, resumes from 6.
    mount = tmp_path / "small_disk"
    mount.mkdir()
    workdir = mount / "run"
    env = {**os.environ, "XLA_FLAGS": xla_flags(8),
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}

    def shell_quote(command):
        return " ".join(f"'{part}'" for part in command)

    script = textwrap.dedent(f"""\
        mount -t tmpfs -o size=16m tmpfs '{mount}' || exit 90
        {shell_quote(_launcher_command(str(workdir), digits_data_dir, 6))} \
            > '{tmp_path}/run1.log' 2>&1 || exit 91
        avail=$(df -k --output=avail '{mount}' | tail -1)
        dd if=/dev/zero of='{mount}/filler' bs=1k count=$((avail - 8)) 2>/dev/null
        {shell_quote(_launcher_command(str(workdir), digits_data_dir, 12))} \
            > '{tmp_path}/run2.log' 2>&1
        echo "run2_rc=$?" > '{tmp_path}/rc'
        ls '{workdir}/checkpoints' > '{tmp_path}/after_full'
        rm '{mount}/filler'
        {shell_quote(_launcher_command(str(workdir), digits_data_dir, 12))} \
            > '{tmp_path}/run3.log' 2>&1 || exit 93
        cp '{workdir}/metrics.jsonl' '{tmp_path}/metrics.jsonl'
        ls '{workdir}/checkpoints' > '{tmp_path}/after_resume'
        """)
    done = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=600)
    logs = {name: (tmp_path / f"{name}.log").read_text()
            for name in ("run1", "run2", "run3") if (tmp_path / f"{name}.log").exists()}
    assert done.returncode == 0, (done.returncode, done.stderr, logs)

    assert (tmp_path / "rc").read_text().strip() != "run2_rc=0", logs["run2"][-3000:]
    assert "saving checkpoint 9" in logs["run2"], logs["run2"][-3000:]
    assert "No space left on device" in logs["run2"]
    assert "the previous checkpoints [3, 6] are kept" in logs["run2"]
    # No half-written step 9 that looks complete, and its partial temporary files are gone.
    assert (tmp_path / "after_full").read_text().split() == ["3", "6"]

    assert "resumed from the checkpoint at step 6" in logs["run3"], logs["run3"][-3000:]
    assert "12" in (tmp_path / "after_resume").read_text().split()
    steps = [r["step"] for r in read_metrics(str(tmp_path))]
    assert steps == sorted(set(steps)) and steps[-1] == 12  # nothing logged twice


def _snapshot(root: str, skip: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """{path: (size, mtime_ns)} of every file under ``root``, except under ``skip``."""
    files = {}
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [d for d in subdirs if d != "__pycache__"
                      and os.path.join(directory, d) not in skip]
        for name in names:
            path = os.path.join(directory, name)
            stat = os.lstat(path)
            files[path] = (stat.st_size, stat.st_mtime_ns)
    return files


@pytest.mark.slow
def test_a_run_writes_nothing_outside_its_workdir(tmp_path, digits_data_dir):
    # HOME, TMPDIR and the working directory are fresh folders, the dataset is prepared; after
    # a run with checkpoints, evaluation and the end-of-run report, every file outside the
    # workdir (those folders, the data_dir and the repository) is as it was.
    home, tmp, cwd = (tmp_path / name for name in ("home", "tmp", "cwd"))
    for folder in (home, tmp, cwd):
        folder.mkdir()
    workdir = str(tmp_path / "workdir")
    watched = [str(tmp_path), digits_data_dir, REPO]
    skip = (workdir, os.path.join(REPO, ".venv"), os.path.join(REPO, ".git"))
    before = {root: _snapshot(root, skip) for root in watched}

    # Without the test run's compilation cache (tests/conftest.py): a run on its own writes
    # none.
    env = {key: value for key, value in os.environ.items()
           if key not in ("TFDS_DATA_DIR", "JAX_COMPILATION_CACHE_DIR")}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               XLA_FLAGS=xla_flags(8))
    result = subprocess.run(_launcher_command(workdir, digits_data_dir, 6), cwd=str(cwd),
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert os.path.exists(os.path.join(workdir, "metrics.jsonl"))

    for root in watched:
        after = _snapshot(root, skip)
        added = sorted(set(after) - set(before[root]))
        changed = sorted(p for p in before[root] if after.get(p) != before[root][p])
        assert not added and not changed, (root, added[:10], changed[:10])
