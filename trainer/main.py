"""The launcher: ``python -m trainer.main --config=configs/<file>.py[:args] --workdir=DIR``.

Any config field can be overridden from the command line (``--config.batch_size=256``).
The same command runs on one CPU, on simulated CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``), on a GPU box and on a pod. For
several hosts started by hand (or processes on one machine), give each process
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``; TPU pods and SLURM are
detected automatically. Starting the same command again resumes from the last checkpoint.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from trainer import host_memory, partitioning

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and logs.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: HOST:PORT of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host: index of this process.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS["verbosity"].present:
        # orbax and XLA log every save at INFO; --verbosity=0 brings them back.
        logging.set_verbosity(logging.WARNING)
    partitioning.initialize_distributed(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    # Imported after initialisation: building the mesh must see every host's devices.
    from trainer.train import train_and_evaluate

    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    host_memory.reexec_with_huge_pages()
    app.run(main)
