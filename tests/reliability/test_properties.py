"""Property-based tests: every valid model/config combination builds and runs, every invalid
one fails early with ValueError."""

import jax
import jax.numpy as jnp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vit
from trainer import partitioning

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@SETTINGS
@given(hidden=st.integers(1, 24), heads=st.integers(1, 5), patch=st.integers(1, 6),
       image=st.integers(1, 13), classes=st.integers(-1, 4),
       classifier=st.sampled_from(["token", "gap", "mean"]), dist=st.booleans())
def test_vit_fields(hidden, heads, patch, image, classes, classifier, dist):
    valid = (hidden % heads == 0 and image % patch == 0 and classes >= 1
             and classifier in ("token", "gap") and not (dist and classifier != "token"))
    kwargs = dict(hidden_size=hidden, num_heads=heads, patch_size=patch, image_size=image,
                  num_layers=1, mlp_dim=8, classifier=classifier, distillation_token=dist)
    if not valid:
        with pytest.raises(ValueError):
            vit.create_model("ViT-micro", classes, **kwargs)
        return
    model = vit.create_model("ViT-micro", classes, **kwargs)
    images = jnp.ones((2, image, image, 3))
    params = model.init(jax.random.key(0), images)
    logits = model.apply(params, images)
    assert logits.shape == (2, classes)
    assert bool(jnp.all(jnp.isfinite(logits)))


@SETTINGS
@given(image=st.integers(2, 12), wrong=st.integers(2, 12), channels=st.integers(1, 4))
def test_vit_rejects_images_it_was_not_built_for(image, wrong, channels):
    # The check is on shapes, made while tracing: shapes alone (eval_shape) exercise it, in a
    # tenth of a second where computing the model took 3 s per new image size.
    model = vit.create_model("ViT-micro", 3, image_size=image, patch_size=1, hidden_size=8,
                             num_heads=2, num_layers=1, mlp_dim=8)
    params = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, image, image, 3)))
    images = jax.ShapeDtypeStruct((1, wrong, wrong, channels), jnp.float32)
    if (wrong, channels) == (image, 3):
        assert jax.eval_shape(model.apply, params, images).shape == (1, 3)
    else:
        with pytest.raises(ValueError, match="images must be"):
            jax.eval_shape(model.apply, params, images)


@SETTINGS
@given(data=st.integers(-2, 9), fsdp=st.integers(-2, 9), batch=st.integers(-4, 40))
def test_mesh_and_batch_size(data, fsdp, batch):
    devices = jax.device_count()  # 8 simulated in the test suite
    sizes = [data, fsdp]
    known = [s for s in sizes if s != -1]
    product = 1
    for size in known:
        product *= size
    if sizes.count(-1) > 1 or any(s < 1 for s in known):
        valid_mesh = False
    elif -1 in sizes:
        valid_mesh = devices % product == 0
    else:
        valid_mesh = product == devices
    if not valid_mesh:
        with pytest.raises(ValueError, match="mesh_shape"):
            partitioning.make_mesh({"data": data, "fsdp": fsdp})
        return
    mesh = partitioning.make_mesh({"data": data, "fsdp": fsdp})
    assert mesh.devices.size == devices
    if batch >= 1 and batch % devices == 0:
        partitioning.check_batch_size(batch, mesh)
    else:
        with pytest.raises(ValueError, match="batch_size"):
            partitioning.check_batch_size(batch, mesh)
