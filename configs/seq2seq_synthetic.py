"""A small Transformer on an offline synthetic seq2seq task (copy, reverse, sort, addition).

Command:
  python -m trainer.main --config=configs/seq2seq_synthetic.py:reverse \
      --workdir=workdirs/s2s_reverse

Data: generated on the fly by ``input_pipeline.synthetic_seq2seq`` (nothing downloaded), with a
held-out split disjoint from training. Model: the "tiny" Transformer (2+2 layers, width 64),
pre-LN, Adam β2 = 0.98, warmup then cosine decay.
Hardware and time: a 2-core CPU, about 5 minutes per task alone (2,000 steps; addition 3,000).
Expected result: >= 99% exact match on the held-out split under greedy decoding for every task.
Measured on a 2-core CPU on 2026-11-29, one task after another with the command above
(``--config.progress_bar=False``; eval/exact_match in each workdir's summary.json): copy
100%, reverse 100%, sort 99.995%, addition 99.92%, in 4 min 52 s, 4 min 44 s, 4 min 44 s and
5 min 13 s of wall time. ``pytest -m acceptance tests/trainer/test_synthetic_accuracy.py``
trains all four and checks the target, by teacher-forced exact match and by greedy decoding
through ``trainer.generate``.
"""

from configs.common import base_config, transformer_model

TASKS = ("copy", "reverse", "sort", "addition")


def get_config(arg: str | None = "reverse"):
    task = arg or "reverse"
    if task not in TASKS:
        raise ValueError(f"config argument {task!r} is not one of {TASKS}")
    config = base_config()
    config.task = "seq2seq"
    config.model = transformer_model(
        "tiny", vocab_size=16, max_length=24, norm_placement="pre", dropout_rate=0.0,
        share_embeddings=True, logits_via_embedding=True)
    config.dataset.name = f"synthetic/{task}"
    # Addition: operands of 1 to 3 digits ("123+45" is 6 tokens; min_len counts digits per
    # operand, max_len tokens of the whole input), a harder task given more steps. These are
    # the examples the results above were measured on.
    min_len, max_len = (1, 7) if task == "addition" else (3, 12)
    config.dataset.source_kwargs = dict(num_examples=20_000, min_len=min_len, max_len=max_len,
                                        vocab_size=16, seed=0)
    config.dataset.eval_split = "test"
    config.batch_size = 128
    config.eval_batch_size = 256
    config.num_train_steps = 3000 if task == "addition" else 2000
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.label_smoothing = 0.0
    config.optimizer.name = "adam"
    config.optimizer.learning_rate = 2e-3
    config.optimizer.b2 = 0.98
    config.optimizer.eps = 1e-9
    config.optimizer.grad_clip_norm = 1.0
    # The paper's inverse-square-root schedule keeps the rate high to the end, and the
    # held-out exact match then wobbles by about a point between evaluations (measured: copy
    # 99.6% at step 1000, 98.3% at step 2000); a cosine decay to zero lands on a converged
    # model. configs/transformer_wmt14.py keeps the paper's schedule.
    config.schedule.name = "warmup_cosine"
    config.schedule.warmup_steps = 200
    return config
