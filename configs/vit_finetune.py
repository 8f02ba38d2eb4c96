"""Fine-tune a pretrained ViT ``.npz`` (google-research/vision_transformer layout).

Command:
  python -m trainer.main --config=configs/vit_finetune.py:cifar10 \
      --config.init_checkpoint=/path/to/ViT-B_16.npz --workdir=workdirs/ft_b16_cifar10
  (argument: cifar10, cifar100, imagenet2012, oxford_iiit_pet or oxford_flowers102)
  Evaluate an official ImageNet-fine-tuned checkpoint as it is, without training, in float32
  as vit_jax computes (this config trains in bfloat16, below):
  python -m trainer.evaluate --config=configs/vit_finetune.py:imagenet2012 \
      --config.init_checkpoint=/path/to/ViT-B_16-imagenet2012-384.npz \
      --config.mixed_precision=False

Recipe (vision_transformer's vit_jax fine-tuning defaults): SGD momentum 0.9, global-norm
clipping 1, batch 512 in 8 accumulation steps, linear warmup then cosine to 0, no weight decay,
384 px images (position embeddings interpolated from 224), new zero-initialised head.
Training images: the Inception crop of vit_jax/input_pipeline.py
(``tf.image.sample_distorted_bounding_box`` with ``area_range=(0.05, 1.0)``, which
``inception_crop(384,5,100)`` samples as TF does) resized to 384, a random flip, values in
[-1, 1]; evaluation images are resized to 384 (aspect ratio not kept). CIFAR trains on
``train[:98%]``, as vit_jax's presets (2% held out). vit_jax resizes to float and never casts,
while ``resize`` here truncates to uint8 before ``value_range``, so pixel values differ by less
than one grey level. Other differences: the model computes in bfloat16 with float32
parameters (``mixed_precision``; vit_jax computes in float32: ``--config.mixed_precision=False``
for that); momentum is kept in float32 (vit_jax: bfloat16); vit_jax
has dataset presets only for CIFAR-10/100 and ImageNet (its README's CIFAR runs: 500 steps, 50
of warmup, as here for CIFAR-10; its ImageNet preset, as here: 20,000 steps on
``train[:99%]``, 500 of warmup, evaluated on ``validation``), so the CIFAR-100 step count and
the Pets/Flowers steps, learning rates and whole ``train`` splits are this repository's
choices.
Expected result: google-research/vision_transformer's README reports ViT-B/16 pretrained on
ImageNet-21k reaching 98.6% on CIFAR-10 after 500 fine-tuning steps, and 84.53% top-1 on
ImageNet after its 20,000 (dropout 0, A100); its AugReg ``...--imagenet2012-steps_20k-lr_0.03-
res_384.npz`` B/16 checkpoint is listed at 85.49%.
Hardware: one GPU/TPU host (minutes on a TPU v3-8). Checkpoints: gs://vit_models/imagenet21k/.
Data: the TFDS dataset of the argument, prepared as ArrayRecord.
"""

from configs.common import base_config, vit_model, with_init_checkpoint

_DATASETS = {
    # name: (num_classes, train split, eval split, steps, warmup steps, base learning rate)
    "cifar10": (10, "train[:98%]", "test", 500, 50, 0.03),
    "cifar100": (100, "train[:98%]", "test", 2000, 200, 0.03),
    "imagenet2012": (1000, "train[:99%]", "validation", 20_000, 500, 0.03),
    "oxford_iiit_pet": (37, "train", "test", 500, 50, 0.003),
    "oxford_flowers102": (102, "train", "test", 500, 50, 0.003),
}


def get_config(arg: str | None = "cifar10"):
    dataset = arg or "cifar10"
    if dataset not in _DATASETS:
        raise ValueError(f"config argument {dataset!r} is not one of {tuple(_DATASETS)}")
    num_classes, train_split, eval_split, steps, warmup, learning_rate = _DATASETS[dataset]
    config = with_init_checkpoint(base_config())
    # vit_jax's new zero head, also from a checkpoint already trained on as many classes.
    config.init_new_head = True
    config.model = vit_model("ViT-B_16", num_classes=num_classes, image_size=384)
    config.dataset.name = dataset
    config.dataset.train_split = train_split
    config.dataset.eval_split = eval_split
    config.pp_train = "decode|inception_crop(384,5,100)|flip_lr|value_range(-1,1)"
    config.pp_eval = "decode|resize(384)|value_range(-1,1)"
    config.batch_size = 512
    config.eval_batch_size = 512
    config.num_train_steps = steps
    config.log_every_steps = 10
    config.eval_every_steps = 100
    config.checkpoint_every_steps = 100
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = learning_rate
    config.optimizer.momentum = 0.9
    config.optimizer.grad_clip_norm = 1.0
    config.optimizer.accum_steps = 8
    config.schedule.warmup_steps = warmup
    config.mixed_precision = True
    return config
