"""Regenerates docs/reliability.md: every fault tried, the test that tries it, and its result.

  python -m tests.reliability.make_report

Runs the listed tests (slow ones included) with pytest's JUnit XML output and writes the
table from that run, so the page always shows measured results.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (fault, how it is tried, pytest node id)
FAULTS = [
    ("Two hosts instead of one", "2 processes × 4 CPU devices (jax.distributed, gloo), the "
     "parameters sharded over both (FSDP), vs 1 process × 8: same losses and parameters",
     "tests/trainer/test_multihost.py::test_two_processes_match_one_process"),
    ("Damaged checkpoint seen by two hosts", "2 processes restore from a workdir whose newest "
     "checkpoint is damaged: both fall back to the same step, process 0 alone moves it aside",
     "tests/trainer/test_checkpointing.py::"
     "test_two_processes_restore_the_same_step_and_process_zero_moves_the_damage"),
    ("SIGKILL at a random step", "kill -9 after a random logged step, restart the same "
     "command: bitwise parameters, identical metrics.jsonl, no step twice",
     "tests/trainer/test_sigkill.py"),
    ("SIGTERM (preemption)", "SIGTERM mid-run: checkpoint saved, exit 0, same command resumes; "
     "at an evaluation step the checkpoint is written before the evaluation runs",
     "tests/trainer/test_preemption.py"),
    ("Stop and resume", "stop at step k, restart: bitwise the parameters of an uninterrupted "
     "run", "tests/trainer/test_resume.py::test_stop_and_resume_equals_uninterrupted"),
    ("Damaged latest checkpoint", "overwrite the newest checkpoint's files: named in the log, "
     "run falls back to the previous one, damaged one moved aside",
     "tests/trainer/test_resume.py::test_damaged_latest_checkpoint_falls_back_to_the_previous_one"),
    ("Checkpoint of another model", "restart a workdir with a wider model: refused, naming "
     "the differing parameters",
     "tests/trainer/test_resume.py::test_workdir_of_another_model_is_refused"),
    ("NaN loss", "learning rate 1e30: stops naming the step; last checkpoint finite",
     "tests/trainer/test_resume.py::test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint"),
    ("Overflowing update", "an update that overflows after a finite loss: its parameters are "
     "never checkpointed, and the step is named",
     "tests/trainer/test_resume.py::test_parameters_of_an_overflowing_update_are_never_checkpointed"),
    ("Overflowing optimizer state", "gradients of 1e20: Adam's second moment is inf while the "
     "parameters stay finite; caught before a save", "tests/trainer/test_nonfinite_state.py"),
    ("Optimizer changed on resume", "restart with another optimizer: refused naming the "
     "optimizer state, every checkpoint kept, the original optimizer still resumes",
     "tests/trainer/test_resume.py::"
     "test_resume_with_another_optimizer_is_refused_and_keeps_every_checkpoint"),
    ("Teacher trained on during a resume", "the teacher's workdir gains steps while the student "
     "is stopped: the resumed student keeps the teacher step it started with",
     "tests/trainer/test_distillation.py::"
     "test_a_resumed_student_keeps_the_teacher_step_it_was_trained_with"),
    ("Full disk", "workdir on a 16 MB tmpfs filled to its last 8 KB: the save fails naming "
     "the step and ENOSPC, the earlier checkpoints are kept, no partial step is left; after "
     "freeing space the same command resumes",
     "tests/reliability/test_filesystem.py::"
     "test_full_disk_fails_the_save_clearly_and_keeps_the_last_good_checkpoint"),
    ("Writes outside the workdir", "fresh HOME, TMPDIR and cwd; every file outside the "
     "workdir (those, the data_dir, the repository) is unchanged after a run",
     "tests/reliability/test_filesystem.py::test_a_run_writes_nothing_outside_its_workdir"),
    ("Two runs on one workdir", "a second run while the lock is held is refused",
     "tests/trainer/test_resume.py::test_second_run_on_a_busy_workdir_is_refused"),
    ("Bad images and labels", "wrong rank, size, channels, dtype; labels outside the classes",
     "tests/reliability/test_bad_input.py"),
    ("Dataset fields the task does not read", "TFDS-like sources with string and variable-size "
     "features (oxford_iiit_pet's file_name, segmentation_mask): dropped before batching",
     "tests/input_pipeline/test_classification_inputs.py"),
    ("Bad images at the model", "wrong shapes and dtypes fail before XLA",
     "tests/vit/test_errors.py"),
    (".npz of another architecture", "wider / shallower checkpoint: ValueError naming key and "
     "shapes", "tests/vit/test_checkpoint.py::test_other_architecture_fails_naming_key_and_shapes"),
    ("Impossible configs", "batch not divisible by devices, bad mesh axes, unknown optimizer; "
     "misspelt field; missing dataset",
     "tests/trainer/test_launcher.py"),
    ("Any model/config combination", "hypothesis: valid ones build and run, invalid ones raise "
     "ValueError", "tests/reliability/test_properties.py"),
]


def run(node_ids: list[str], junit: str) -> None:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    f"--junitxml={junit}", *node_ids], cwd=REPO, env=env, check=False)


def results(junit: str) -> dict[str, tuple[int, int, float]]:
    """file or node prefix -> (passed, skipped, total, seconds)."""
    tree = ElementTree.parse(junit)
    cases = []
    for case in tree.iter("testcase"):
        path = case.get("classname", "").replace(".", "/")
        node = f"{path}.py::{case.get('name')}"
        failed = any(child.tag in ("failure", "error") for child in case)
        skipped = any(child.tag == "skipped" for child in case)
        cases.append((node, failed, skipped, float(case.get("time", 0))))
    out = {}
    for _, _, node_id in FAULTS:
        chosen = [c for c in cases if c[0].startswith(node_id) or
                  c[0].split("[")[0] == node_id]
        passed = sum(1 for c in chosen if not c[1] and not c[2])
        skipped = sum(1 for c in chosen if c[2])
        out[node_id] = (passed, skipped, len(chosen), sum(c[3] for c in chosen))
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        run([f for _, _, f in FAULTS], junit)
        outcome = results(junit)
    lines = ["# Reliability", "",
             f"Generated by `python -m tests.reliability.make_report` on "
             f"{time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPU cores). Each row is a fault, "
             "how the test provokes it, and what the run measured.", "",
             "| fault | how it is tried | test | result |", "| --- | --- | --- | --- |"]
    for fault, how, node_id in FAULTS:
        passed, skipped, total, seconds = outcome[node_id]
        verdict = ("passed" if total and passed == total else f"{passed}/{total} passed"
                   + (f", {skipped} skipped" if skipped else ""))
        lines.append(f"| {fault} | {how} | `{node_id}` | {verdict} "
                     f"({total} test{'s' if total != 1 else ''}, {seconds:.0f} s) |")
    lines.append("")
    os.makedirs(os.path.join(REPO, "docs"), exist_ok=True)
    with open(os.path.join(REPO, "docs", "reliability.md"), "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
