"""ViT-Ti/S/B from scratch on CIFAR-10 with the DeiT recipe (AdamW, warmup + cosine, label
smoothing 0.1, mixup 0.8 / cutmix 1.0, RandAugment 2 layers magnitude 9). The crop is not
DeiT's: big_vision's ``inception_crop`` (TF's sampler, 35-100% of the area, aspect 0.75-1.33,
bilinear back to 32 px without antialiasing), milder than DeiT's 8-100% for 32 px images.

Command:
  python -m trainer.main --config=configs/vit_cifar10.py:S_16 --workdir=workdirs/vit_s16_cifar10
  (argument: Ti_16, S_16 or B_16; patches of 4 px on the 32 px images: "S_16" picks the S width)

Data: TFDS ``cifar10`` prepared as ArrayRecord in ``--config.dataset.data_dir`` (see the
README, "Preparing datasets"). Hardware: one GPU or TPU host; about 1 hour on an A100 for S.
Expected result: not measured in this repository yet (no accelerator was available when it
was written); ViTs trained from scratch on small datasets lag CNNs without strong augmentation
(DeiT, Touvron et al., 2021, section 5). Record the measured figure here with its command.
"""

from configs.common import base_config, vit_model, with_init_checkpoint

_SIZES = ("Ti_16", "S_16", "B_16")


def get_config(arg: str | None = "S_16"):
    variant = arg or "S_16"
    if variant not in _SIZES:
        raise ValueError(f"config argument {variant!r} is not one of {_SIZES}")
    config = with_init_checkpoint(base_config())
    config.model = vit_model(f"ViT-{variant}", num_classes=10, image_size=32, patch_size=4)
    config.dataset.name = "cifar10"
    config.pp_train = "inception_crop(32,35,100)|flip_lr|randaugment(2,9)|value_range(-1,1)"
    config.pp_eval = "value_range(-1,1)"
    config.batch_size = 512
    config.eval_batch_size = 1000
    # Fields that follow the batch size are references to it, so that --config.batch_size=...
    # keeps 300 epochs, 5 of warmup and the learning rate per image.
    batch_size = config.get_ref("batch_size")
    steps_per_epoch = 50_000 // batch_size
    config.num_train_steps = steps_per_epoch * 300
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.label_smoothing = 0.1
    config.mixup.mixup_alpha = 0.8
    config.mixup.cutmix_alpha = 1.0
    # DeiT: lr 5e-4 per 512 images, weight decay 0.05, 5 warmup epochs, cosine.
    config.optimizer.learning_rate = batch_size.to_float() * (5e-4 / 512)
    config.optimizer.weight_decay = 0.05
    config.optimizer.grad_clip_norm = 0.0
    config.schedule.warmup_steps = steps_per_epoch * 5
    config.schedule.end_learning_rate_factor = 0.01
    config.mixed_precision = True
    return config
