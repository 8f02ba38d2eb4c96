"""Logits equal those of google-research/vision_transformer for the same parameters.

The fixtures hold parameters and logits produced by the official ``vit_jax/models_vit.py``
(regenerate with tests/fixtures/vit/regenerate.py). When ``VIT_JAX_OFFICIAL`` points to a
checkout of that repository, the official model is also run live.
"""

import os

import numpy as np
import pytest

import vit
from tests.fixtures.vit.regenerate import MODELS, SIZES

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "fixtures", "vit")


def _our_model(kind):
    return vit.create_model(
        "ViT-micro", SIZES["num_classes"], image_size=SIZES["image_size"],
        patch_size=SIZES["patch_size"], hidden_size=SIZES["hidden_size"],
        num_layers=SIZES["num_layers"], num_heads=SIZES["num_heads"],
        mlp_dim=SIZES["mlp_dim"], **MODELS[kind])


@pytest.mark.parametrize("kind", list(MODELS))
def test_logits_match_official_implementation(kind):
    model = _our_model(kind)
    params = vit.load_pretrained(os.path.join(FIXTURES, f"official_{kind}.npz"), model)
    images = np.load(os.path.join(FIXTURES, "images.npy"))
    logits = np.asarray(model.apply({"params": params}, images, train=False))
    expected = np.load(os.path.join(FIXTURES, f"official_{kind}_logits.npy"))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not os.environ.get("VIT_JAX_OFFICIAL"),
                    reason="set VIT_JAX_OFFICIAL=/path/to/vision_transformer to run live")
@pytest.mark.parametrize("kind", list(MODELS))
def test_logits_match_official_implementation_live(kind, tmp_path):
    import jax

    from tests.fixtures.vit import regenerate

    official = regenerate.official_model(kind)
    images = np.load(os.path.join(FIXTURES, "images.npy"))
    params = official.init(jax.random.key(7), images, train=False)["params"]
    params = jax.tree.map(lambda x: np.random.default_rng(1).normal(size=x.shape) * 0.5,
                          params)
    params = regenerate.scaled_params(params, kind)
    path = str(tmp_path / "official.npz")
    vit.save_npz(params, path)
    ours = _our_model(kind)
    np.testing.assert_allclose(
        ours.apply({"params": vit.load_pretrained(path, ours)}, images),
        official.apply({"params": params}, images, train=False), rtol=1e-4, atol=1e-5)
