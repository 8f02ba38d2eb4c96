"""The multi-host BLEU test's computation: ``generation_metrics()`` is the BLEU of
``Seq2SeqTask.generation_metrics`` on a tiny untrained model, with the parameters held as the
launcher holds them (global arrays over the devices of every process);
``python -m tests.trainer.bleu_worker PROCESS_ID NUM_PROCESSES PORT`` prints it from one
process of a multi-host run."""

import json
import sys

from trainer import partitioning


class _DigitsTokenizer:
    """Stands in for sentencepiece: token ids up to EOS (1) as space-separated numbers."""

    def decode(self, ids):
        ids = [int(i) for i in ids]
        ids = ids[: ids.index(1)] if 1 in ids else ids
        return " ".join(str(i) for i in ids if i > 0)


class _Tokenize:
    tokenizer = _DigitsTokenizer()


def main(process_id: int, num_processes: int, port: int) -> None:
    partitioning.initialize_distributed(f"127.0.0.1:{port}", num_processes, process_id)
    print("BLEU " + json.dumps(generation_metrics()), flush=True)


def generation_metrics() -> dict:
    import jax

    from tests.trainer.tiny import tiny_seq2seq_config
    from trainer.optimizers import make_optimizer
    from trainer.steps import init_state
    from trainer.tasks import create_task

    config = tiny_seq2seq_config(bleu_eval_batches=2)
    task = create_task(config)
    mesh = partitioning.make_mesh({"data": -1, "fsdp": 1})
    tx, _ = make_optimizer(config, config.num_train_steps)
    dummy = task.dummy_batch(mesh.devices.size)
    abstract = jax.eval_shape(lambda: init_state(task, tx, 0, dummy))
    shardings = partitioning.state_shardings(abstract, mesh, 2**18)
    state = jax.jit(lambda: init_state(task, tx, 0, dummy), out_shardings=shardings)()
    task._tokenize = _Tokenize()  # what a text dataset's transforms() sets
    return task.generation_metrics(state.params, {}, mesh, jax.process_index(),
                                   jax.process_count())


if __name__ == "__main__":
    main(*(int(arg) for arg in sys.argv[1:]))
