"""Distilling all-MiniLM-L6-v2 into a 2-block student through the launcher (smoke test), and
the held-out metrics it reports."""

import json
import os

import numpy as np
import pytest

from tests.trainer.launcher import run_launcher
from trainer.tasks.sentence_distillation import nearest_neighbour_agreement
from transformer import pretrained

try:
    pretrained.minilm_model_dir()
    HAVE_MINILM = True
except FileNotFoundError:
    HAVE_MINILM = False


def test_nearest_neighbour_agreement_by_hand():
    teacher = np.eye(4)[[0, 0, 1, 1]] + 0.1 * np.eye(4)  # rows 0/1 and 2/3 are neighbours
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    assert nearest_neighbour_agreement(teacher, teacher) == 1.0
    swapped = teacher[:, [2, 3, 0, 1]][[0, 2, 1, 3]]  # neighbours now 0/2 and 1/3
    assert nearest_neighbour_agreement(swapped, teacher) == 0.0
    # One sentence has no other to be nearest to (it used to score 1.0 whatever the
    # embeddings); none used to fail inside numpy's argmax.
    for rows in (1, 0):
        with pytest.raises(ValueError, match=f"n >= 2 sentences.*got {rows} and {rows} rows"):
            nearest_neighbour_agreement(teacher[:rows], -teacher[:rows])


def _tiny_task_and_params(batch):
    """The sentence task on tiny random encoders (a 2-block teacher, a 1-block student; loss
    weights 1, 0.5 and 2 for the embedding, feature and attention terms), and random
    ``(student, teacher)`` parameters for ``batch``'s shapes."""
    import jax

    from configs import distill_minilm
    from trainer.tasks import create_task

    task = create_task(distill_minilm.get_config())
    sizes = dict(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=16, max_position_embeddings=8)
    task.teacher = pretrained.bert_from_config(sizes)
    task.model = pretrained.bert_from_config(sizes, num_layers=1)
    task.weights = {"embedding": 1.0, "feature": 0.5, "attention": 2.0}
    rng = np.random.default_rng(0)

    def random_params(model):  # initialising for real compiled for seconds
        shapes = jax.eval_shape(model.init, jax.random.key(0), batch["input_ids"],
                                batch["attention_mask"])["params"]
        return jax.tree.map(lambda leaf: rng.normal(size=leaf.shape).astype(leaf.dtype),
                            shapes)

    return task, random_params(task.model), random_params(task.teacher)


@pytest.mark.skipif(not HAVE_MINILM, reason=pretrained.MINILM_INSTALL)
def test_a_max_length_beyond_the_teachers_positions_is_named():
    from configs import distill_minilm
    from trainer.tasks import create_task

    config = distill_minilm.get_config()
    config.max_length = 600
    with pytest.raises(ValueError, match=r"config.max_length=600 must be in \[2, 512\]"):
        create_task(config)


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MINILM, reason=pretrained.MINILM_INSTALL)
def test_student_distillation_runs_and_reports(tmp_path):
    workdir = str(tmp_path / "student")
    result = run_launcher(
        "configs/distill_minilm.py", workdir, "--config.num_train_steps=4",
        "--config.log_every_steps=2", "--config.eval_every_steps=4",
        "--config.checkpoint_every_steps=4", "--config.schedule.warmup_steps=1",
        "--config.batch_size=8", "--config.eval_batch_size=16", "--config.max_length=16",
        "--config.dataset.source_kwargs.max_examples=32", "--config.report_batch_size=8",
        "--config.distill.attention_weight=1.0", "--config.progress_bar=False",
        devices=2, timeout=600)
    assert "nn_agreement" in result.stdout
    with open(os.path.join(workdir, "compression_report.json")) as f:
        report = json.load(f)
    rows = report["models"]
    # 2 of 6 blocks: the student's encoder does a third of the teacher's work.
    assert rows["student"]["flops_per_example"] < 0.5 * rows["teacher"]["flops_per_example"]
    assert rows["student"]["parameters"] < rows["teacher"]["parameters"]
    quality = report["quality"]
    # Initialised from teacher blocks 0 and 5 and trained 4 steps: already close, not equal.
    assert 0.2 < quality["mean_cosine"] < 1.0
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert any("train/attention_loss" in r for r in records)
    # The report's quality is the final evaluation's (any fraction would pass a range check).
    assert quality["nn_agreement"] == records[-1]["eval/nn_agreement"]
    assert quality["mean_cosine"] == records[-1]["eval/cosine"]


@pytest.mark.skipif(not HAVE_MINILM, reason=pretrained.MINILM_INSTALL)
def test_the_loss_is_the_documented_sum_over_real_tokens():
    """On tiny random encoders (a 2-block teacher, a 1-block student, weights 1, 0.5 and 2),
    the loss equals, in numpy from separate forward passes: mean(1 - cos) of the mean-pooled
    (real tokens), L2-normalised embeddings + 0.5 MSE of the last hidden states over real
    tokens + 2 KL(teacher || student) of the last attention maps over real query rows. The
    second sentence has two padding tokens; the pooled embeddings are not unit vectors, so
    a term that skipped the normalisation, the mask or the KL's direction differs. The
    evaluation sums 1 - cos and cos over the real sentences (mask) from the same passes."""
    import jax

    batch = {"input_ids": np.array([[1, 5, 7, 9, 2], [1, 4, 2, 0, 0]], np.int32),
             "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int32)}
    task, params, teacher_params = _tiny_task_and_params(batch)

    @jax.jit  # one program: op by op compiled every op
    def run(params, teacher_params):
        loss, metrics = task.loss(params, batch, jax.random.key(1),
                                  {"teacher": teacher_params})
        outputs = [model.apply({"params": p}, batch["input_ids"], batch["attention_mask"],
                               train=False, mutable=["intermediates"])
                   for model, p in ((task.model, params), (task.teacher, teacher_params))]
        sums = task.eval_sums(params, {**batch, "mask": np.array([1, 0], np.float32)},
                              {"teacher": teacher_params})
        return loss, metrics, outputs, sums

    loss, metrics, outputs, sums = run(params, teacher_params)
    real = batch["attention_mask"].astype(np.float64)
    embeddings, hidden, attention = [], [], []
    for last, state in outputs:
        last = np.asarray(last, np.float64)
        pooled = (last * real[..., None]).sum(1) / real.sum(1, keepdims=True)
        embeddings.append(pooled / np.linalg.norm(pooled, axis=-1, keepdims=True))
        hidden.append(last)
        attention.append(np.asarray(
            pretrained.bert_intermediates(state)["attention_weights"][-1], np.float64))
    assert np.abs(np.linalg.norm(pooled, axis=-1) - 1).min() > 0.1  # normalising matters
    cosine = np.sum(embeddings[0] * embeddings[1], -1)
    feature = np.sum(np.mean((hidden[0] - hidden[1]) ** 2, -1) * real) / real.sum()
    student_maps, teacher_maps = attention
    keys = teacher_maps > 0  # padding keys: 0 under both models, and 0 log 0 = 0
    per_row = np.sum(teacher_maps * (np.log(np.where(keys, teacher_maps, 1.0))
                                     - np.log(np.where(keys, student_maps, 1.0))), -1)
    kl = np.sum(per_row * real[:, None]) / (real.sum() * student_maps.shape[1])
    np.testing.assert_allclose(metrics["cosine"], np.mean(cosine), rtol=1e-5)
    np.testing.assert_allclose(metrics["embedding_loss"], np.mean(1 - cosine), rtol=1e-4)
    np.testing.assert_allclose(metrics["feature_loss"], 0.5 * feature, rtol=1e-4)
    np.testing.assert_allclose(metrics["attention_loss"], 2.0 * kl, rtol=1e-4)
    np.testing.assert_allclose(loss, np.mean(1 - cosine) + 0.5 * feature + 2.0 * kl,
                               rtol=1e-4)
    # Evaluation: the same cosine, summed over real sentences (the second is padding here).
    np.testing.assert_allclose(sums["cosine"], [cosine[0], 1], rtol=1e-5)
    np.testing.assert_allclose(sums["loss"], [1 - cosine[0], 1], rtol=1e-4)


@pytest.mark.skipif(not HAVE_MINILM, reason=pretrained.MINILM_INSTALL)
def test_the_student_starts_from_the_listed_teacher_blocks_as_copies():
    """DistilBERT's initialisation with init_from_teacher_layers=(0, 5): student block 0 is
    a copy of teacher block 0 and block 1 of teacher block 5 (not 1), with the teacher's
    embeddings; copies, since the train state is donated to the step. Teacher blocks are
    tagged by their index, so no forward pass or checkpoint is needed."""
    from configs import distill_minilm
    from trainer.tasks import create_task

    task = create_task(distill_minilm.get_config())
    assert task.init_layers == (0, 5)
    task._teacher_params = {
        "embeddings": {"word": np.arange(3.0)},
        "encoder": {f"encoderblock_{j}": {"tag": np.full(2, float(j))} for j in range(6)}}
    params = task.pretrained_params(None)
    assert sorted(params["encoder"]) == ["encoderblock_0", "encoderblock_1"]
    np.testing.assert_array_equal(params["encoder"]["encoderblock_0"]["tag"], [0.0, 0.0])
    np.testing.assert_array_equal(params["encoder"]["encoderblock_1"]["tag"], [5.0, 5.0])
    np.testing.assert_array_equal(params["embeddings"]["word"], [0.0, 1.0, 2.0])
    assert not np.shares_memory(params["encoder"]["encoderblock_1"]["tag"],
                                task._teacher_params["encoder"]["encoderblock_5"]["tag"])


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MINILM, reason=pretrained.MINILM_INSTALL)
def test_accumulation_weighs_each_loss_term_by_its_own_count():
    """Gradient accumulation over 4 micro-batches equals one step on the batch: the
    embedding term is a mean over sentences, the feature and attention terms means over real
    tokens, and micro-batch 0 (rows 0 and 4) holds 10 real tokens where the others hold 4.
    Weighing the whole loss by sentences moved the update by 30% here, by tokens 0.4%."""
    import jax
    import optax

    from tests.trainer.test_accumulation import ACCUM_STEPS, _full_and_accumulated
    from trainer.steps import TrainState

    lengths = np.array([5, 2, 2, 2, 5, 2, 2, 2])  # row i goes to micro-batch i % 4
    mask = (np.arange(5) < lengths[:, None]).astype(np.int32)
    ids = np.random.default_rng(1).integers(3, 20, size=mask.shape) * mask
    batch = {"input_ids": ids.astype(np.int32), "attention_mask": mask}
    assert ACCUM_STEPS == 4
    task, params, teacher_params = _tiny_task_and_params(batch)
    tx = optax.sgd(1.0)
    state = TrainState(step=jax.numpy.zeros((), np.int32), params=params,
                       opt_state=tx.init(params), rng=jax.random.key_data(jax.random.key(0)))
    (full, full_metrics), (accum, accum_metrics) = _full_and_accumulated(
        task, tx, optax.constant_schedule(1.0), state, batch, {"teacher": teacher_params})
    difference = optax.tree.norm(jax.tree.map(np.subtract, accum, full))
    assert float(optax.tree.norm(full)) > 1e-2
    assert float(difference / optax.tree.norm(full)) < 1e-5
    for name, value in full_metrics.items():
        np.testing.assert_allclose(accum_metrics[name], value, rtol=1e-5, err_msg=name)
