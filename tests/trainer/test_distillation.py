"""The distillation task through the launcher, on tiny models."""

import json
import logging
import os

import jax
import jax.flatten_util
import numpy as np
import pytest

from tests.trainer.launcher import run_launcher
from tests.trainer.tiny import STEP_FLAGS, tiny_digits_config
from trainer.checkpointing import restore_params
from trainer.train import train_and_evaluate

# Out of the quick subset: every test here trains or needs the module's trained teacher.
pytestmark = pytest.mark.slow

TEACHER = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, dropout_rate=0.0,
               classifier="gap")
TEACHER_FLAGS = tuple(f"--config.distill.teacher_model.{k}={v}" for k, v in TEACHER.items())
# Float32 forward passes in another order than the step's: agreement to this relative
# tolerance; a wrong layer map or token selection must move a loss by 10x more.
RTOL = 1e-4


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory, digits_data_dir):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    overrides = {f"model.{k}": v for k, v in TEACHER.items()}
    train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=4, **overrides),
                       workdir)
    return workdir


@pytest.mark.parametrize("method", [
    "soft",
    pytest.param("hard", marks=pytest.mark.acceptance),
    pytest.param("deit_token", marks=pytest.mark.acceptance)])
def test_distillation_through_launcher(tmp_path, digits_data_dir, teacher_workdir, method):
    teacher_before = restore_params(teacher_workdir)
    workdir = str(tmp_path / "student")
    # The soft run also takes the transfer-set path: labels for a fifth of the images only.
    transfer = (("--config.dataset.train_split=train[:20%]",
                 "--config.distill.unlabelled_split=train[20%:]") if method == "soft" else ())
    result = run_launcher(
        f"configs/distill_digits.py:{method}", workdir, *STEP_FLAGS, *TEACHER_FLAGS, *transfer,
        f"--config.distill.teacher_checkpoint={teacher_workdir}",
        f"--config.dataset.data_dir={digits_data_dir}", "--config.report_batch_size=8")
    assert "compression report" in result.stdout
    # Only the student is checkpointed, and the teacher's checkpoint is untouched.
    student = restore_params(workdir)
    assert "teacher" not in student and "Transformer" in student
    assert student["Transformer"]["posembed_input"]["pos_embedding"].shape[-1] == 32
    for a, b in zip(jax.tree.leaves(teacher_before), jax.tree.leaves(
            restore_params(teacher_workdir)), strict=True):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(workdir, "compression_report.json")) as f:
        report = json.load(f)
    rows = report["models"]
    assert rows["teacher"]["parameters"] > rows["student"]["parameters"] > 0
    assert rows["teacher"]["flops_per_example"] > rows["student"]["flops_per_example"] > 0
    assert 0.0 <= report["top1_agreement"] <= 1.0
    assert rows["teacher"]["accuracy"] is not None and rows["student"]["accuracy"] is not None


def test_teacher_is_frozen_inside_the_step(digits_data_dir, teacher_workdir):
    """Gradients reach only the student's parameters."""
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("soft")
    for key, value in TEACHER.items():
        config.distill.teacher_model[key] = value
    config.distill.teacher_checkpoint = teacher_workdir
    config.dataset.data_dir = digits_data_dir
    task = create_task(config)
    batch = task.dummy_batch(4)
    batch["image"] = np.random.default_rng(0).normal(size=batch["image"].shape).astype(
        np.float32)
    params = task.init_params(jax.random.key(0), batch)
    frozen = task.frozen_variables()
    grads = jax.grad(lambda p, f: task.loss(p, batch, jax.random.key(1), f)[0],
                     argnums=(0, 1))(params, frozen)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads[1]))
    assert any(np.any(g != 0) for g in jax.tree.leaves(grads[0]))


def _transfer_task(teacher_workdir, digits_data_dir, method="soft", unlabelled="train[10%:]"):
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config(method)
    for key, value in TEACHER.items():
        config.distill.teacher_model[key] = value
    config.distill.teacher_checkpoint = teacher_workdir
    config.dataset.data_dir = digits_data_dir
    config.dataset.train_split = "train[:10%]"
    config.distill.unlabelled_split = unlabelled
    return create_task(config)


@pytest.mark.parametrize("method", ["soft", "hard", "deit_token"])
def test_unlabelled_images_teach_through_the_teacher_only(digits_data_dir, teacher_workdir,
                                                          method):
    """With distill.unlabelled_split the batches carry label_weight (1 for the labelled tenth)
    and the loss does not depend on the labels of unlabelled images, even after mixup."""
    task = _transfer_task(teacher_workdir, digits_data_dir, method)
    batch = next(iter(task.train_iterator(0, 1)))
    assert set(np.unique(batch["label_weight"])) == {0.0, 1.0}
    assert np.all(batch["label"][batch["label_weight"] == 0] == 0)
    params = task.init_params(jax.random.key(0), task.dummy_batch(2))
    frozen = task.frozen_variables()
    # Gradients, not loss values: the zero-initialised head predicts uniformly, so its
    # cross-entropy is log(10) whatever the label, but its gradient is softmax - target.
    grad = jax.jit(lambda b: jax.flatten_util.ravel_pytree(jax.grad(
        lambda p: task.loss(p, b, jax.random.key(1), frozen)[0])(params))[0])
    reference = np.asarray(grad(batch))
    relabelled = dict(batch, label=np.where(batch["label_weight"] == 0, 7, batch["label"]))
    np.testing.assert_allclose(grad(relabelled), reference, rtol=1e-6, atol=1e-9)
    flipped = dict(batch, label=np.where(batch["label_weight"] == 1,
                                         (batch["label"] + 1) % 10, batch["label"]))
    assert np.abs(np.asarray(grad(flipped)) - reference).max() > 1e-4


def test_mixup_of_labelled_and_unlabelled_images_mixes_the_label_weights():
    """Mixup pairs each image with the batch reversed: here (0, 3) and (1, 2), one labelled
    and one unlabelled per pair (label_weight [1, 0, 1, 0]). A mixed image's label weight is
    its labelled part's share (lam or 1 - lam) and its target that part's label alone, whole
    (the unlabelled part's label is never read); labelled with labelled, as without a transfer
    set, gives weight 1 and the mixed one-hot targets. lam is read off the images (example i
    is constant 10^i)."""
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("soft")
    config.dataset.train_split, config.distill.unlabelled_split = "train[:10%]", "train[10%:]"
    config.mixup.mixup_alpha, config.mixup.cutmix_alpha = 0.8, 0.0
    task = create_task(config)
    images = np.broadcast_to(10.0 ** np.arange(4)[:, None, None, None],
                             (4, 8, 8, 1)).astype(np.float32)
    labels = np.array([1, 2, 3, 4], np.int32)
    mix = jax.jit(task._mixed_targets)  # one program: op by op, the Beta draw took seconds
    for seed in (0, 1):
        batch = {"image": images, "label": labels,
                 "label_weight": np.array([1, 0, 1, 0], np.float32)}
        mixed, targets, weights = (np.asarray(x) for x in mix(jax.random.key(seed), batch))
        lam = (1000.0 - mixed[0, 0, 0, 0]) / 999.0  # image 0: lam * 1 + (1 - lam) * 1000
        assert 0.02 < lam < 0.98, lam  # both parts present, else the check proves little
        np.testing.assert_allclose(weights, [lam, 1 - lam, lam, 1 - lam], rtol=1e-4)
        np.testing.assert_allclose(targets, np.eye(10)[[1, 3, 3, 1]], atol=1e-5)
        batch["label_weight"] = np.ones(4, np.float32)
        _, targets, weights = (np.asarray(x) for x in mix(jax.random.key(seed), batch))
        np.testing.assert_allclose(weights, 1.0, rtol=1e-6)
        np.testing.assert_allclose(targets, lam * np.eye(10)[labels]
                                   + (1 - lam) * np.eye(10)[labels[::-1]], atol=1e-4)


def test_unlabelled_split_needs_a_teacher_and_another_split(digits_data_dir, teacher_workdir):
    with pytest.raises(ValueError, match="unlabelled_split.*method='none'"):
        _transfer_task(teacher_workdir, digits_data_dir, "none")
    with pytest.raises(ValueError, match="must differ"):
        _transfer_task(teacher_workdir, digits_data_dir, unlabelled="train[:10%]")


@pytest.mark.parametrize("method, field, value, message", [
    ("soft", "reduction", "none",
     r"config\.distill\.reduction='none' is not supported; expected one of "
     r"\('batchmean', 'mean'\)"),
    ("deit_token", "token_type", "soft_",
     r"config\.distill\.token_type='soft_' is not supported; expected one of "
     r"\('hard', 'soft', 'none'\)"),
    ("deit_token", "token_type", None,
     r"config\.distill\.token_type is missing; method='deit_token' needs it")],
    ids=["reduction_none", "token_type_unknown", "token_type_missing"])
def test_logit_loss_options_are_checked_when_the_task_is_built(method, field, value, message):
    """Both fields are read only when the loss is traced: without the check, reduction='none'
    fails inside jax.grad (a non-scalar loss) and a missing token_type as an AttributeError."""
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config(method)
    if value is None:
        del config.distill[field]
    else:
        config.distill[field] = value
    with pytest.raises(ValueError, match=message):
        create_task(config)


def test_teacher_and_student_class_counts_must_match():
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("soft")
    config.distill.teacher_model.num_classes = 7
    with pytest.raises(ValueError, match=r"config\.distill\.teacher_model has 7 classes and "
                                         r"the student 10"):
        create_task(config)


def test_a_teacher_npz_whose_head_does_not_fit_is_refused(tmp_path):
    """A fine-tuning load gives a mismatched head a fresh zero one; for a frozen teacher that
    is a uniform teacher, so the teacher loader refuses instead."""
    import vit
    from trainer.tasks.distillation import load_teacher_params

    teacher = vit.create_model("ViT-micro", num_classes=10, image_size=8, patch_size=4,
                               num_channels=1)
    five_classes = teacher.clone(num_classes=5)
    params = five_classes.init(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))["params"]
    vit.save_npz(params, str(tmp_path / "teacher5.npz"))
    with pytest.raises(ValueError, match=r"head/kernel.*num_classes=10"):
        load_teacher_params(str(tmp_path / "teacher5.npz"), teacher)
    vit.save_npz(params, str(tmp_path / "same.npz"))
    loaded, step = load_teacher_params(str(tmp_path / "same.npz"), five_classes)
    np.testing.assert_array_equal(loaded["head"]["bias"], params["head"]["bias"])
    assert step is None


def test_an_npz_teacher_is_read_on_the_configured_position_grid(tmp_path):
    """``config.distill.teacher_checkpoint_grid`` reaches the loader: the teacher's
    16-position table (GAP: no class token) given as 2x8 is resized to its 4x4 grid, where it
    is otherwise read as 4x4 and kept."""
    import vit
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("soft")
    teacher = create_task(config).teacher
    params = jax.jit(teacher.init)(jax.random.key(0), np.zeros((1, 8, 8, 1), np.float32))
    path = str(tmp_path / "teacher.npz")
    vit.save_npz(params["params"], path)
    config.distill.teacher_checkpoint = path
    table = params["params"]["Transformer"]["posembed_input"]["pos_embedding"]

    def loaded_table(task):
        return task.frozen_variables()["teacher"]["Transformer"]["posembed_input"][
            "pos_embedding"]

    np.testing.assert_array_equal(loaded_table(create_task(config)), table)
    config.distill.teacher_checkpoint_grid = (2, 8)
    np.testing.assert_allclose(loaded_table(create_task(config)),
                               vit.resize_posembed(np.asarray(table), 0, (4, 4), (2, 8)))
    assert teacher.grid_size == (4, 4) and teacher.num_prefix_tokens == 0
    config.distill.teacher_checkpoint_grid = (2, 8, 1)
    with pytest.raises(ValueError, match=r"config.distill.teacher_checkpoint_grid=\(2, 8, 1\)"):
        create_task(config)


def test_hard_distillation_logs_that_it_ignores_alpha(caplog):
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("hard")
    with caplog.at_level(logging.WARNING):
        create_task(config)  # alpha=0.5: DeiT's own weights, nothing to say
    assert "ignored" not in caplog.text
    config.distill.alpha = 0.9
    with caplog.at_level(logging.WARNING):
        create_task(config)
    assert "config.distill.alpha=0.9 is ignored by method='hard'" in caplog.text


def test_missing_teacher_checkpoint_is_a_clear_error(tmp_path, digits_data_dir):
    result = run_launcher("configs/distill_digits.py:soft", str(tmp_path / "s"), *STEP_FLAGS,
                          f"--config.distill.teacher_checkpoint={tmp_path / 'nowhere'}",
                          f"--config.dataset.data_dir={digits_data_dir}", check=False)
    assert result.returncode != 0 and "teacher_checkpoint" in result.stderr


def _feature_task(teacher_workdir, digits_data_dir, **student):
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("soft")
    for key, value in TEACHER.items():
        config.distill.teacher_model[key] = value
    for key, value in student.items():
        config.model[key] = value
    config.distill.teacher_checkpoint = teacher_workdir
    config.distill.feature_weight = 1.0
    config.distill.attention_weight = 1.0
    config.dataset.data_dir = digits_data_dir
    return create_task(config)


def _separate_blocks(model, params, images):
    """``(hidden [batch, tokens, width], attention [batch, heads, tokens, tokens])`` of every
    block, as numpy, from a forward pass of its own (not the training step's)."""
    _, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
    inner = state["intermediates"]["Transformer"]
    return [(np.asarray(inner[f"encoderblock_{i}"]["hidden_state"][0]),
             np.asarray(inner[f"encoderblock_{i}"]["MultiHeadDotProductAttention_1"]
                        ["attention_weights"][0])) for i in range(model.num_layers)]


def _untrained_feature_task(method, teacher, **student):
    """A task with feature and attention distillation on (weights 1, mixup off), its
    parameters, a random batch and a randomly initialised teacher: the checks compare block
    outputs, for which an untrained teacher is as good as a trained one."""
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config(method)
    for key, value in {**TEACHER, **teacher}.items():
        config.distill.teacher_model[key] = value
    for key, value in student.items():
        config.model[key] = value
    config.distill.feature_weight = 1.0
    config.distill.attention_weight = 1.0
    config.mixup.mixup_alpha = 0.0
    task = create_task(config)
    batch = task.dummy_batch(4)
    batch["image"] = np.random.default_rng(0).normal(size=batch["image"].shape).astype(
        np.float32)
    batch["label"] = np.arange(4, dtype=np.int32)
    params = task.init_params(jax.random.key(0), batch)
    frozen = {"teacher": task.teacher.init(jax.random.key(1), batch["image"][:1])["params"]}
    return task, params, frozen, batch


def _patch_maps(weights, prefix):
    """``[batch, heads, patches, patches]``: the prefix tokens' rows and columns dropped, the
    rows renormalised (float64, numpy; independent of the task's ``patch_attention``)."""
    maps = np.asarray(weights, np.float64)[:, :, prefix:, prefix:]
    return maps / maps.sum(-1, keepdims=True)


def _attention_kl(teacher_maps, student_maps):
    return np.mean(np.sum(teacher_maps * (np.log(teacher_maps) - np.log(student_maps)), -1))


def test_feature_and_attention_terms_match_separate_forward_passes(digits_data_dir,
                                                                    teacher_workdir):
    """A student of another width (projection) and head count (head-averaged maps): the terms
    taken from the training forward pass equal the losses recomputed from separate passes,
    and gradients reach the student and the projection, never the teacher."""
    from trainer.tasks.distillation import PROJECTION, student_only

    task = _feature_task(teacher_workdir, digits_data_dir, hidden_size=16, num_heads=1,
                         mlp_dim=32, num_layers=1)
    batch = task.dummy_batch(4)
    batch["image"] = np.random.default_rng(0).normal(size=batch["image"].shape).astype(
        np.float32)
    batch["label"] = np.arange(4, dtype=np.int32)
    params = task.init_params(jax.random.key(0), batch)
    assert params[PROJECTION]["projection"]["kernel"].shape == (16, 32)
    frozen = task.frozen_variables()
    # Mixup off, so the step's images are the batch's.
    task.config.mixup.mixup_alpha = 0.0
    loss, metrics = task.loss(params, batch, jax.random.key(1), frozen)

    student = _separate_blocks(task.model, student_only(params), batch["image"])
    teacher = _separate_blocks(task.teacher, frozen["teacher"], batch["image"])
    projected = task.projection.apply({"params": params[PROJECTION]}, student[0][0])
    # One student block maps to the teacher's last block.
    expected_feature = np.mean((np.asarray(projected) - np.asarray(teacher[1][0])) ** 2)
    t_map = np.asarray(teacher[1][1]).mean(axis=1)  # 2 teacher heads averaged, 1 student head
    s_map = np.asarray(student[0][1])[:, 0]
    expected_attention = np.mean(np.sum(t_map * (np.log(t_map) - np.log(s_map)), -1))
    np.testing.assert_allclose(metrics["feature_loss"], expected_feature, rtol=1e-4)
    np.testing.assert_allclose(metrics["attention_loss"], expected_attention, rtol=1e-4)
    np.testing.assert_allclose(
        loss, metrics["logit_loss"] + expected_feature + expected_attention, rtol=1e-4)
    assert float(metrics["attention_loss"]) > 0 and float(metrics["feature_loss"]) > 0

    grads = jax.grad(lambda p, f: task.loss(p, batch, jax.random.key(1), f)[0],
                     argnums=(0, 1))(params, frozen)
    assert all(np.all(g == 0) for g in jax.tree.leaves(grads[1]))
    assert np.any(grads[0][PROJECTION]["projection"]["kernel"] != 0)
    assert np.any(grads[0]["Transformer"]["encoderblock_0"]["MlpBlock_3"]["Dense_0"]["kernel"]
                  != 0)


def test_two_student_blocks_learn_from_teacher_blocks_1_and_3_of_4():
    """TinyBERT's uniform map for L_s=2, L_t=4 is [1, 3], and MiniLM's attention term pairs
    the last blocks (1 and 3). The alternatives a broken map would give (the teacher's last
    block for every student block, the first blocks, ...) are shown to give other values."""
    from trainer.tasks.distillation import PROJECTION, student_only

    task, params, frozen, batch = _untrained_feature_task(
        "soft", dict(num_layers=4), hidden_size=16, num_heads=2, mlp_dim=32, num_layers=2)
    _, metrics = task.loss(params, batch, jax.random.key(2), frozen)
    student = _separate_blocks(task.model, student_only(params), batch["image"])
    teacher = _separate_blocks(task.teacher, frozen["teacher"], batch["image"])
    assert len(student) == 2 and len(teacher) == 4

    def feature_loss(teacher_blocks):
        return np.mean([np.mean((np.asarray(task.projection.apply(
            {"params": params[PROJECTION]}, student[i][0])) - teacher[t][0]) ** 2)
            for i, t in enumerate(teacher_blocks)])

    expected = feature_loss([1, 3])
    np.testing.assert_allclose(metrics["feature_loss"], expected, rtol=RTOL)
    for wrong in ([3, 3], [1, 1], [0, 1], [0, 2], [2, 3], [3, 1]):
        assert abs(feature_loss(wrong) - expected) > 10 * RTOL * expected, wrong

    def attention_loss(student_block, teacher_block):  # 2 heads each: compared per head
        return _attention_kl(_patch_maps(teacher[teacher_block][1], 0),
                             _patch_maps(student[student_block][1], 0))

    expected = attention_loss(1, 3)
    np.testing.assert_allclose(metrics["attention_loss"], expected, rtol=RTOL)
    for wrong in ((0, 3), (1, 1), (1, 2), (0, 0)):
        assert abs(attention_loss(*wrong) - expected) > 10 * RTOL * expected, wrong


def test_three_student_blocks_learn_from_teacher_blocks_1_2_3_of_4_with_their_weights():
    """The documented map, block i to teacher block ceil((i + 1) L_t / L_s) - 1, for L_s=3 and
    L_t=4 (which do not divide): [ceil(4/3), ceil(8/3), ceil(12/3)] - 1 = [1, 2, 3]; rounding
    down gives [0, 1, 3]. The block outputs are made by hand (teacher block t's hidden states
    all t + 1, the student's 0, so block pairs (i, t) cost (t + 1)^2 and the map is read off
    the mean), fed to the task's terms without a forward pass. Each term is scaled by its own
    weight (0.5 and 3, not the 1 of the other tests), and the attention term is MiniLM's
    KL(teacher || student) between the last blocks, per head (2 heads each)."""
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("soft")
    for key, value in {**TEACHER, "num_layers": 4}.items():
        config.distill.teacher_model[key] = value
    config.model.num_layers = 3
    config.distill.feature_weight, config.distill.attention_weight = 0.5, 3.0
    task = create_task(config)
    assert task.projection is None and task.model.num_prefix_tokens == 0  # GAP, same width
    batch, tokens, width, heads = 2, 3, TEACHER["hidden_size"], TEACHER["num_heads"]
    rng = np.random.default_rng(0)

    def maps():
        logits = rng.normal(size=(batch, heads, tokens, tokens))
        return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

    student = [(np.zeros((batch, tokens, width), np.float32), maps()) for _ in range(3)]
    teacher = [(np.full((batch, tokens, width), t + 1.0, np.float32), maps()) for t in range(4)]
    terms = task._feature_terms({}, student, teacher)

    np.testing.assert_allclose(terms["feature_loss"], 0.5 * (2**2 + 3**2 + 4**2) / 3,
                               rtol=1e-6)  # floor's [0, 1, 3]: 0.5 * (1 + 4 + 16) / 3
    expected = _attention_kl(teacher[3][1], student[2][1])
    np.testing.assert_allclose(terms["attention_loss"], 3.0 * expected, rtol=1e-5)
    for wrong in (_attention_kl(student[2][1], teacher[3][1]),
                  _attention_kl(teacher[3][1], student[0][1])):
        assert abs(wrong - expected) > 1e-3 * expected


class _GivenLogits:
    """Stands in for a ViT: ``apply`` returns the logits held in its "parameters" (the
    student's: a pair for the DeiT heads), so the loss is checked without a forward pass. A
    teacher asked for training-mode outputs fails."""

    image_size, num_channels = 8, 1

    def __init__(self, teacher=False):
        self.teacher = teacher

    def apply(self, variables, images, train, rngs=None):
        assert not (self.teacher and train), "the teacher runs with train=False"
        return variables["params"]["logits"]


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("method", ["soft", "hard", "deit_token"])
def test_logit_losses_follow_hinton_and_deit(method):
    """The logit loss of each method against its paper's formula, in numpy, with
    alpha = 0.3 and T = 2 (the configs' alpha = 0.5 cannot tell alpha from 1 - alpha):
    soft (Hinton et al., 2015) mean((1 - alpha) CE(labels) + alpha T^2 KL(p_t^T || p_s^T));
    hard (DeiT) mean(CE(labels) / 2 + CE(argmax teacher) / 2), alpha not read; deit_token
    (DeiT) (1 - alpha) CE(class head, labels) + alpha CE(distillation head, argmax teacher),
    whose agreement is the two heads' mean's. Each label term is scaled by the example's
    label_weight (a transfer set's; fractions are what mixup makes of 0 and 1), the teacher
    term not. The models are stubs returning given logits."""
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config(method)
    config.distill.alpha, config.distill.temperature = 0.3, 2.0
    config.label_smoothing, config.mixup.mixup_alpha = 0.0, 0.0
    task = create_task(config)
    task.model, task.teacher = _GivenLogits(), _GivenLogits(teacher=True)
    rng = np.random.default_rng(0)
    batch = {"image": np.zeros((6, 8, 8, 1), np.float32),
             "label": np.array([0, 1, 2, 3, 4, 5], np.int32),
             "label_weight": np.array([1, 0.25, 0, 1, 0.5, 1], np.float32)}
    student, dist, teacher = (2.0 * rng.normal(size=(6, 10)) for _ in range(3))
    outputs = (student, dist) if method == "deit_token" else student
    loss, metrics = jax.jit(task.loss)(  # one program: op by op compiled every op
        {"logits": outputs}, batch, jax.random.key(0), {"teacher": {"logits": teacher}})

    def cross_entropy(logits, labels):
        return -_log_softmax(logits)[np.arange(6), labels]

    alpha, t = 0.3, 2.0
    labels, hard, w = batch["label"], teacher.argmax(-1), batch["label_weight"]
    if method == "soft":
        log_p_t, log_p_s = _log_softmax(teacher / t), _log_softmax(student / t)
        kl = np.sum(np.exp(log_p_t) * (log_p_t - log_p_s), -1)
        expected = np.mean((1 - alpha) * w * cross_entropy(student, labels)
                           + alpha * t**2 * kl)
    elif method == "hard":
        expected = np.mean(0.5 * w * cross_entropy(student, labels) + 0.5 * cross_entropy(
            student, hard))
    else:
        expected = ((1 - alpha) * np.mean(w * cross_entropy(student, labels))
                    + alpha * np.mean(cross_entropy(dist, hard)))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    inference = (student + dist) / 2 if method == "deit_token" else student
    agreement = np.mean(inference.argmax(-1) == hard)
    assert agreement != np.mean(student.argmax(-1) == hard) or method != "deit_token"
    np.testing.assert_allclose(metrics["agreement"], agreement, rtol=1e-6)


def test_evaluation_counts_teacher_accuracy_and_agreement_over_real_examples():
    """Evaluation's teacher figures, by hand: 4 examples, the last padding (mask 0), where
    both models are right. Over the 3 real ones the student is right once (example 0), the
    teacher twice (0 and 1), and they agree twice (0, and 2 where both are wrong): accuracy
    1/3, teacher accuracy 2/3, agreement 2/3 (argmax against argmax, not the labels)."""
    from configs import distill_digits
    from trainer.tasks import create_task

    task = create_task(distill_digits.get_config("soft"))
    task.model, task.teacher = _GivenLogits(), _GivenLogits(teacher=True)
    labels = np.array([1, 2, 3, 4], np.int32)
    student, teacher = np.eye(10)[[1, 5, 6, 4]], np.eye(10)[[1, 2, 6, 4]]
    batch = {"image": np.zeros((4, 8, 8, 1), np.float32), "label": labels,
             "mask": np.array([1, 1, 1, 0], np.float32)}
    sums = jax.jit(task.eval_sums)({"logits": student}, batch, {"teacher": {"logits": teacher}})
    np.testing.assert_allclose(sums["accuracy"], [1, 3])
    np.testing.assert_allclose(sums["teacher_accuracy"], [2, 3])
    np.testing.assert_allclose(sums["agreement"], [2, 3])


def test_a_teacher_of_twice_the_resolution_sees_the_batch_resized_bilinearly():
    """A 16x16 teacher of an 8x8 student sees the batch upsampled bilinearly (half-pixel
    centres, as jax.image.resize and TF2): on a ramp image (pixel value = column), output
    column j is the ramp at (j + 1/2) / 2 - 1/2, clamped to the edges [0, 7]; nearest
    neighbour would give the steps floor((j + 1/2) / 2)."""
    from configs import distill_digits
    from trainer.tasks import create_task

    seen = []

    class Teacher(_GivenLogits):
        image_size = 16

        def apply(self, variables, images, train, rngs=None):
            seen.append(np.asarray(images))
            return np.zeros((images.shape[0], 10), np.float32)

    task = create_task(distill_digits.get_config("soft"))
    task.teacher = Teacher(teacher=True)
    ramp = np.broadcast_to(np.arange(8.0, dtype=np.float32)[None, None, :, None], (2, 8, 8, 1))
    task.teacher_logits({"teacher": {}}, ramp)
    assert seen[0].shape == (2, 16, 16, 1)
    expected = np.clip((np.arange(16) + 0.5) / 2 - 0.5, 0, 7)
    np.testing.assert_allclose(seen[0][1, 5, :, 0], expected, atol=1e-5)


def test_the_compression_report_measures_the_student_without_its_projection(monkeypatch):
    """The feature projection is trained in the student's state but is not part of the
    student: the report (its parameter count) gets the student's parameters without it, and
    the teacher's with inputs at the teacher's resolution. Flax ignores an extra top-level
    parameter in ``apply``, so only the count would show a projection left in."""
    from configs import distill_digits
    from trainer import compression_report
    from trainer.tasks import create_task
    from trainer.tasks.distillation import PROJECTION

    config = distill_digits.get_config("soft")
    config.model.hidden_size, config.distill.feature_weight = 16, 1.0
    config.distill.teacher_model.image_size = 16
    config.distill.teacher_model.patch_size = 4  # the student's 4x4 patch grid
    task = create_task(config)
    assert task.projection is not None
    captured = {}
    monkeypatch.setattr(compression_report, "write_report",
                        lambda workdir, models, images, final_eval: captured.update(models))
    params = {"Transformer": {"w": np.zeros(2)}, PROJECTION: {"kernel": np.zeros((16, 32))}}
    task.on_train_end(params, {"teacher": {"t": np.zeros(3)}}, "unused", {})
    assert captured["student"][1] == {"Transformer": {"w": params["Transformer"]["w"]}}
    assert captured["teacher"][1] == {"t": captured["teacher"][1]["t"]}
    assert captured["teacher"][2].shape[1:] == (16, 16, 1)


def test_deit_token_student_and_class_token_teacher_compare_patch_tokens_only():
    """The student has two leading tokens (class, distillation), the teacher one (class): both
    terms drop them and renormalise the attention rows over the patches. Keeping any prefix
    token makes the shapes differ (an error); dropping the wrong tokens or skipping the
    renormalisation changes the values by more than the tolerance, as checked here."""
    from trainer.tasks.distillation import student_only

    task, params, frozen, batch = _untrained_feature_task(
        "deit_token", dict(classifier="token"))
    assert (task.model.num_prefix_tokens, task.teacher.num_prefix_tokens) == (2, 1)
    assert task.projection is None  # same width: the hidden states are compared as they are
    _, metrics = task.loss(params, batch, jax.random.key(2), frozen)
    student = _separate_blocks(task.model, student_only(params), batch["image"])
    teacher = _separate_blocks(task.teacher, frozen["teacher"], batch["image"])
    patches = int(np.prod(task.model.grid_size))
    assert student[0][0].shape[1] == patches + 2 and teacher[1][0].shape[1] == patches + 1

    # One student block maps to the teacher's last block (⌈1·2/1⌉ − 1 = 1).
    expected_feature = np.mean((student[0][0][:, 2:] - teacher[1][0][:, 1:]) ** 2)
    np.testing.assert_allclose(metrics["feature_loss"], expected_feature, rtol=RTOL)
    wrong_tokens = np.mean((student[0][0][:, :-2] - teacher[1][0][:, :-1]) ** 2)
    assert abs(wrong_tokens - expected_feature) > 10 * RTOL * expected_feature

    s_maps, t_maps = _patch_maps(student[0][1], 2), _patch_maps(teacher[1][1], 1)
    expected_attention = _attention_kl(t_maps, s_maps)
    np.testing.assert_allclose(metrics["attention_loss"], expected_attention, rtol=RTOL)
    # The prefix tokens take a real share of the rows, so renormalising matters.
    s_raw = np.asarray(student[0][1], np.float64)[:, :, 2:, 2:]
    t_raw = np.asarray(teacher[1][1], np.float64)[:, :, 1:, 1:]
    assert s_raw.sum(-1).mean() < 0.97 and t_raw.sum(-1).mean() < 0.97
    unnormalised = np.mean(np.sum(t_raw * (np.log(t_raw) - np.log(s_raw)), -1))
    assert abs(unnormalised - expected_attention) > 10 * RTOL * expected_attention


def test_feature_distillation_needs_a_teacher_and_matching_patch_grids(digits_data_dir,
                                                                      teacher_workdir):
    from configs import distill_digits
    from trainer.tasks import create_task

    config = distill_digits.get_config("none")
    config.distill.feature_weight = 1.0
    with pytest.raises(ValueError, match="need a teacher"):
        create_task(config)
    with pytest.raises(ValueError, match="patch grid"):
        _feature_task(teacher_workdir, digits_data_dir, patch_size=4)


def test_feature_distillation_through_launcher(tmp_path, digits_data_dir, teacher_workdir):
    from trainer.metrics import read_metrics

    workdir = str(tmp_path / "student")
    run_launcher(
        "configs/distill_digits.py:soft", workdir, *STEP_FLAGS, *TEACHER_FLAGS,
        f"--config.distill.teacher_checkpoint={teacher_workdir}",
        f"--config.dataset.data_dir={digits_data_dir}", "--config.report_batch_size=8",
        "--config.model.hidden_size=16", "--config.distill.feature_weight=1.0",
        "--config.distill.attention_weight=1.0", "--config.distill.feature_loss=cosine")
    logged = [r for r in read_metrics(workdir) if "train/feature_loss" in r]
    assert logged and all(np.isfinite(r["train/attention_loss"]) for r in logged)
    student = restore_params(workdir)
    assert "distill_projection" in student  # trained with the student, in its state
    with open(os.path.join(workdir, "compression_report.json")) as f:
        report = json.load(f)
    assert report["models"]["student"]["parameters"] < report["models"]["teacher"]["parameters"]


def test_a_teacher_workdir_of_another_model_is_refused(teacher_workdir):
    """Flax runs a 2-block checkpoint as a 1-block teacher without a word (extra parameters
    are ignored), so the loader compares the checkpoint with ``teacher_model`` first."""
    from configs import distill_digits
    from trainer.tasks import create_task
    from trainer.tasks.distillation import load_teacher_params

    config = distill_digits.get_config("soft")
    for key, value in {**TEACHER, "num_layers": 1}.items():
        config.distill.teacher_model[key] = value
    shallower = create_task(config).teacher
    with pytest.raises(ValueError, match=r"not a checkpoint of config\.distill\.teacher_model"
                                         r".*encoderblock_1"):
        load_teacher_params(teacher_workdir, shallower)
    params, step = load_teacher_params(teacher_workdir, shallower.clone(num_layers=2))
    assert step == 4 and "encoderblock_1" in params["Transformer"]


def test_a_resumed_student_keeps_the_teacher_step_it_was_trained_with(tmp_path, digits_data_dir,
                                                                      teacher_workdir):
    """The teacher's workdir trains on while the student is stopped: the resumed student
    must go on with the teacher of its first part, not switch to the newest step."""
    import shutil

    from configs import distill_digits
    from trainer.checkpointing import restore_params_with_meta
    from trainer.tasks import create_task

    teacher = str(tmp_path / "teacher")
    shutil.copytree(teacher_workdir, teacher)

    def student_config(**fields):
        config = distill_digits.get_config("soft")
        for key, value in TEACHER.items():
            config.distill.teacher_model[key] = value
        config.distill.teacher_checkpoint = teacher
        config.dataset.data_dir = digits_data_dir
        config.schedule.warmup_steps = 2
        config.update(dict(num_train_steps=6, checkpoint_every_steps=3, eval_every_steps=6,
                           log_every_steps=3, batch_size=32, eval_batch_size=64,
                           report_batch_size=8, progress_bar=False, log_mfu=False, **fields))
        return config

    student = str(tmp_path / "student")
    train_and_evaluate(student_config(stop_after_step=3), student)
    overrides = {f"model.{k}": v for k, v in TEACHER.items()}
    train_and_evaluate(tiny_digits_config(digits_data_dir, num_train_steps=6, **overrides),
                       teacher)  # the teacher's run goes on from step 4 to 6
    train_and_evaluate(student_config(), student)
    _, step, meta = restore_params_with_meta(student)
    assert step == 6 and meta["teacher"] == {"checkpoint": teacher, "step": 4, "ema": False}

    frozen = create_task(student_config()).resumed_frozen_variables(meta)["teacher"]
    pinned, newest = restore_params(teacher, 4), restore_params(teacher)
    for got, want in zip(jax.tree.leaves(frozen), jax.tree.leaves(pinned), strict=True):
        np.testing.assert_array_equal(got, want)
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(pinned), jax.tree.leaves(newest), strict=True))

    # trainer.evaluate reads the student with that teacher too: its teacher metrics are the
    # run's final ones (with the teacher's newest step the agreement differed).
    from trainer.evaluate import evaluate_run

    metrics, source = evaluate_run(student)
    assert source == f"the parameters of the checkpoint at step 6 of {student}"
    final = json.loads((tmp_path / "student" / "summary.json").read_text())["final_eval"]
    assert set(metrics) == set(final)
    for key, value in final.items():
        assert metrics[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key



@pytest.mark.parametrize("with_blocks", [False, True], ids=["logits", "feature_terms"])
def test_a_teacher_with_dropout_teaches_without_it(with_blocks):
    """The teacher's targets come from ``train=False``. Every other teacher here has
    dropout_rate=0, where a teacher run in training mode gives the same targets; this one has
    dropout, so the task's loss must equal the loss recomputed from the teacher applied with
    ``train=False``. Both forward paths: logits alone, and with the blocks' outputs."""
    from configs import distill_digits
    from trainer.tasks import create_task
    from trainer.tasks.distillation import student_only

    config = distill_digits.get_config("soft")
    for key, value in {**TEACHER, "dropout_rate": 0.5}.items():
        config.distill.teacher_model[key] = value
    config.distill.feature_weight = config.distill.attention_weight = float(with_blocks)
    config.mixup.mixup_alpha = 0.0  # the step's images are the batch's
    task = create_task(config)
    batch = task.dummy_batch(4)
    batch["image"] = np.random.default_rng(0).normal(size=batch["image"].shape).astype(
        np.float32)
    batch["label"] = np.arange(4, dtype=np.int32)
    # Random values of the initialisers' shapes: initialising for real took seconds, and a
    # zero-initialised teacher head gives constant logits, which dropout cannot move.
    rng = np.random.default_rng(1)

    def random_like(shapes):
        return jax.tree.map(lambda leaf: (0.3 * rng.normal(size=leaf.shape)).astype(leaf.dtype),
                            shapes)

    params = random_like(jax.eval_shape(task.init_params, jax.random.key(0), batch))
    teacher_params = random_like(jax.eval_shape(task.teacher.init, jax.random.key(1),
                                                batch["image"][:1])["params"])

    loss, metrics = jax.jit(task.loss)(params, batch, jax.random.key(2),
                                       {"teacher": teacher_params})

    @jax.jit  # one program: op-by-op forward passes compiled every op, for seconds
    def forwards(params, teacher_params, images):
        # The student has no dropout: its training-mode outputs are these.
        return [model.apply({"params": p}, images, train=False, mutable=["intermediates"])
                for model, p in ((task.teacher, teacher_params), (task.model, params))]

    (teacher, t_state), (student, s_state) = forwards(student_only(params), teacher_params,
                                                      batch["image"])
    teacher, student = np.asarray(teacher, np.float64), np.asarray(student, np.float64)

    def log_softmax(z):
        z = z - z.max(-1, keepdims=True)
        return z - np.log(np.exp(z).sum(-1, keepdims=True))

    smoothing, t, alpha = config.label_smoothing, config.distill.temperature, config.distill.alpha
    targets = np.eye(10)[batch["label"]] * (1 - smoothing) + smoothing / 10
    cross_entropy = -np.sum(targets * log_softmax(student), -1)
    log_p_teacher, log_p_student = log_softmax(teacher / t), log_softmax(student / t)
    kl = t**2 * np.sum(np.exp(log_p_teacher) * (log_p_teacher - log_p_student), -1)
    expected = np.mean((1 - alpha) * cross_entropy + alpha * kl)  # batchmean
    if with_blocks:
        np.testing.assert_allclose(metrics["logit_loss"], expected, rtol=RTOL)
        # One student block maps to the teacher's last (of 2); same widths and head counts.
        s_block = s_state["intermediates"]["Transformer"]["encoderblock_0"]
        t_block = t_state["intermediates"]["Transformer"]["encoderblock_1"]
        feature = np.mean((np.asarray(s_block["hidden_state"][0], np.float64)
                           - np.asarray(t_block["hidden_state"][0], np.float64)) ** 2)
        attention = _attention_kl(
            _patch_maps(t_block["MultiHeadDotProductAttention_1"]["attention_weights"][0], 0),
            _patch_maps(s_block["MultiHeadDotProductAttention_1"]["attention_weights"][0], 0))
        np.testing.assert_allclose(metrics["feature_loss"], feature, rtol=RTOL)
        np.testing.assert_allclose(metrics["attention_loss"], attention, rtol=RTOL)
        expected += feature + attention
    np.testing.assert_allclose(loss, expected, rtol=RTOL)
