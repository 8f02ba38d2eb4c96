"""Image tasks' input pipelines on catalogue datasets, and the image configs' data settings."""

import numpy as np
import pytest

from input_pipeline import parse_preprocess
from input_pipeline.fake_data import build_fake_dataset


@pytest.fixture(scope="module")
def pets_dir(tmp_path_factory):
    """oxford_iiit_pet with random content: a string ``file_name``, variable-size images and
    ``segmentation_mask``, as in the real dataset."""
    return build_fake_dataset("oxford_iiit_pet", str(tmp_path_factory.mktemp("tfds_pets")),
                              {"train": 16, "test": 8})


def _pets_config(data_dir):
    from configs import vit_finetune

    config = vit_finetune.get_config("oxford_iiit_pet")
    config.dataset.data_dir = data_dir
    config.batch_size = 8
    config.eval_batch_size = 8
    return config


def _check_batch_is_numeric(task, batch, keys):
    from trainer import partitioning

    assert set(batch) == keys, sorted(batch)
    assert all(np.issubdtype(v.dtype, np.number) for v in batch.values()), {
        k: v.dtype for k, v in batch.items()}
    task.check_batch(batch, "training batch")
    mesh = partitioning.make_mesh({"data": -1, "fsdp": 1})
    partitioning.global_batch(batch, mesh)  # what the training loop does with every batch


def test_classification_batches_drop_string_and_variable_size_features(pets_dir):
    from input_pipeline import get_source
    from trainer.tasks import create_task

    source = get_source("oxford_iiit_pet", "train", pets_dir)
    assert isinstance(source[0]["file_name"], bytes)
    assert len({source[i]["segmentation_mask"].shape for i in range(4)}) > 1
    task = create_task(_pets_config(pets_dir))
    batch = next(iter(task.train_iterator(0, 1)))
    _check_batch_is_numeric(task, batch, {"image", "label"})
    assert batch["image"].shape == (8, 384, 384, 3)
    eval_batch = next(iter(task.eval_batches(0, 1)))
    _check_batch_is_numeric(task, eval_batch, {"image", "label", "mask"})


def test_distillation_transfer_set_batches_drop_them_too(pets_dir):
    """distill.unlabelled_split builds its iterator from input_pipeline.PartiallyLabelled."""
    import ml_collections

    from configs.common import vit_model
    from trainer.tasks import create_task

    config = _pets_config(pets_dir)
    config.task = "distillation"
    config.distill = ml_collections.ConfigDict(dict(
        method="soft", teacher_model=vit_model("ViT-Ti_16", num_classes=37, image_size=384),
        teacher_checkpoint="unused.npz", temperature=4.0, alpha=0.5, reduction="batchmean",
        unlabelled_split="test"))
    task = create_task(config)
    batch = next(iter(task.train_iterator(0, 1)))
    _check_batch_is_numeric(task, batch, {"image", "label", "label_weight"})


def test_finetune_training_pp_is_the_official_inception_crop():
    """vision_transformer's fine-tuning train pp: sample_distorted_bounding_box with
    area_range (0.05, 1.0), resize to the image size, flip, values in [-1, 1]."""
    from configs import vit_finetune

    config = vit_finetune.get_config("cifar10")
    assert "inception_crop(384,5,100)" in config.pp_train
    ops = parse_preprocess(config.pp_train)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    views = set()
    for seed in range(20):
        example, rng = {"image": image, "label": 0}, np.random.default_rng(seed)
        for op in ops:
            example = op.random_map(example, rng) if hasattr(op, "random_map") else op.map(
                example)
        out = example["image"]
        assert out.shape == (384, 384, 3) and out.dtype == np.float32
        assert -1 <= out.min() and out.max() <= 1
        views.add(out.tobytes())
    assert len(views) > 2  # random crops, not only the two flips


@pytest.mark.parametrize("variant", ["Ti_16", "S_16", "B_16"])
def test_imagenet_batches_split_over_the_32_cores_of_a_v3_32(variant):
    """The config's docstring names a TPU v3-32; eval pads and masks its last batch."""
    from configs import vit_imagenet

    config = vit_imagenet.get_config(variant)
    assert config.batch_size % 32 == 0 and config.eval_batch_size % 32 == 0


def test_finetune_cifar_trains_on_vit_jax_split():
    """vit_jax's presets hold 2% of the CIFAR training images out."""
    from configs import vit_finetune

    for dataset in ("cifar10", "cifar100"):
        assert vit_finetune.get_config(dataset).dataset.train_split == "train[:98%]"
    assert vit_finetune.get_config("oxford_iiit_pet").dataset.train_split == "train"


def test_imagenet_pp_and_min_lr_are_deits():
    """DeiT (timm): RandomResizedCrop(0.08-1, bicubic) for training; for evaluation the
    shorter side to 256 with PIL's bicubic, then the central 224; min_lr 1e-5, unscaled."""
    from PIL import Image

    from configs import vit_imagenet

    config = vit_imagenet.get_config("Ti_16")
    assert "random_resized_crop(224,0.08,1.0,'bicubic')" in config.pp_train
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    example = {"image": image, "label": 0}
    for op in parse_preprocess(config.pp_eval):
        example = op.map(example)
    resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.BICUBIC))
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    want = (resized[16:240, 58:282] / 255 - mean) / std
    np.testing.assert_allclose(example["image"], want, atol=1e-5)
    peak = config.optimizer.learning_rate
    assert peak == pytest.approx(1e-3)
    assert peak * config.schedule.end_learning_rate_factor == pytest.approx(1e-5)


@pytest.mark.parametrize("name, examples, epochs", [("vit_imagenet", 1_281_167, 300),
                                                    ("vit_cifar10", 50_000, 300)])
def test_a_batch_size_override_keeps_the_recipe_per_image(name, examples, epochs):
    """``--config.batch_size=256`` on the DeiT configs: the steps still make the recipe's
    epochs, the warmup 5 of them, the learning rate 5e-4 per 512 images, the end rate 1e-5."""
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config("Ti_16")
    config.batch_size = 256
    steps_per_epoch = examples // 256
    assert config.num_train_steps == epochs * steps_per_epoch
    assert config.schedule.warmup_steps == 5 * steps_per_epoch
    assert config.optimizer.learning_rate == pytest.approx(5e-4 * 256 / 512)
    if name == "vit_imagenet":
        assert config.eval_every_steps == 5 * steps_per_epoch
        assert (config.optimizer.learning_rate * config.schedule.end_learning_rate_factor
                == pytest.approx(1e-5))
    # An explicit override of a derived field still wins.
    config.optimizer.learning_rate = 1e-3
    assert config.optimizer.learning_rate == 1e-3
