"""Every wrong configuration fails at construction with a ValueError naming the field."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit


@pytest.mark.parametrize("overrides, field", [
    (dict(hidden_size=100, num_heads=3), "hidden_size=100 must be divisible by num_heads=3"),
    (dict(image_size=20, patch_size=16), "image_size=20 must be positive and divisible by "
                                         "patch_size=16"),
    (dict(num_classes=0), "num_classes=0"),
    (dict(classifier="mean"), "classifier='mean'"),
    (dict(dropout_rate=1.0), "dropout_rate=1.0"),
    (dict(distillation_token=True, classifier="gap"), "distillation_token"),
    (dict(num_layers=0), "num_layers=0 must be >= 1"),
    (dict(num_heads=0), "num_heads=0 must be >= 1"),
    (dict(mlp_dim=0), "mlp_dim=0 must be >= 1"),
    (dict(hidden_size=0), "hidden_size=0 must be >= 1"),
    (dict(num_channels=0), "num_channels=0 must be >= 1"),
    (dict(representation_size=0), "representation_size=0 must be >= 1"),
    (dict(remat_policy="some"), "remat_policy='some' is not supported"),
    (dict(attention_implementation="flash"), "attention_implementation='flash' is not "
                                             "supported"),
    (dict(patch_size=(4, 4, 4)), "patch_size=(4, 4, 4) must be an int or a (height, width) "
                                 "pair"),
    (dict(image_size=224.0), "image_size=224.0 must be an int or a (height, width) pair"),
])
def test_construction_errors(overrides, field):
    kwargs = {"num_classes": 10, **overrides}
    num_classes = kwargs.pop("num_classes")
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        vit.create_model("ViT-Ti_16", num_classes, **kwargs)


def test_unknown_model_name_lists_known_ones():
    with pytest.raises(ValueError, match=r"unknown ViT model name 'ViT-B16'.*ViT-B_16.*known"):
        vit.create_model("ViT-B16", 10)


def test_unknown_field_is_rejected():
    with pytest.raises(ValueError, match="hidden_dim"):
        vit.create_model("ViT-Ti_16", 10, hidden_dim=3)


@pytest.mark.parametrize("images, message", [
    (np.zeros((1, 32, 32, 3), np.float32), r"\[batch, 16, 16, 3\].*got shape \(1, 32, 32, 3\)"),
    (np.zeros((16, 16, 3), np.float32), "got shape"),
    (np.zeros((1, 16, 16, 1), np.float32), "channels"),
    (np.zeros((1, 16, 16, 3), np.uint8), "floating point"),
])
def test_bad_images_fail_before_xla(images, message):
    model = vit.create_model("ViT-micro", 10, image_size=16, patch_size=4)
    params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    with pytest.raises(ValueError, match=message):
        model.apply(params, images)
