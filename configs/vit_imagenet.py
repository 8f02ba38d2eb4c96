"""ViT-Ti/S/B/16 from scratch on ImageNet-1k with the DeiT recipe (without distillation).

Command:
  python -m trainer.main --config=configs/vit_imagenet.py:S_16 --workdir=workdirs/deit_s16_i1k

Recipe (DeiT, Touvron et al., 2021, Table 9): AdamW lr 5e-4·batch/512 (1e-3 at batch 1024),
weight decay 0.05, 300 epochs, 5 warmup epochs then cosine to an unscaled 1e-5, label
smoothing 0.1, mixup 0.8, cutmix 1.0, RandAugment (m9), random erasing 0.25, stochastic depth
0.1, batch 1024. Data pipeline as timm's for DeiT: torchvision's RandomResizedCrop to 224
(area 8-100%, bicubic), flip and timm's RandAugment ``rand-m9-mstd0.5-inc1`` for training
(its ops pixel for pixel, its random draws in distribution: each of 2 ops, drawn with
replacement, applied with probability 0.5 at magnitude N(9, 0.5) clipped to [0, 10];
increasing-severity ops, ImageNet-mean fill, bicubic); repeated augmentation as DeiT's
``RASampler`` (``aug_repeats=3``: an epoch holds a third of the images, each three times in
one batch, each copy augmented on its own); a model EMA with decay 0.99996 (DeiT's default
``--model-ema``), evaluated beside the model as ``eval_ema/*`` (DeiT's script evaluates and
reports the model itself, ``eval/*`` here, and only saves the EMA); evaluation resizes the
shorter side to int(224 / 0.875) = 256 (bicubic, antialiased as PIL does) and takes the
central 224.
The learning rate follows DeiT's to the epoch (``schedule.name="timm_cosine"``): timm's
``CosineLRScheduler`` from a warmup rate of 1e-6, changed once per epoch, its cosine counted
over all 300 epochs, and a step behind as DeiT's ``main.py`` steps it (epoch e trains at the
rate of e - 1).
Differences from DeiT: the three copies of an image
share a batch, where DeiT's sampler deals them to different GPUs (the same global batch: a
ViT has no batch statistics); mixup/CutMix draws one weight and one choice for the whole
global batch and pairs it with its reverse, where each DeiT GPU draws its own and reverses
its own 128 images, so here the copies of an image tend to share one partner image and, at
the middle of a batch, a copy can be mixed with another copy of itself; DeiT's epoch is cut to a multiple of 256 images;
the evaluation resize rounds the longer side and the central crop rounds its offset down,
where torchvision truncates and rounds (at most a pixel apart).
Hardware and time: a TPU v3-32 / 8×A100 host, about 2–3 days for S (DeiT reports 3 days on
one 8-GPU node for DeiT-B).
Expected result (DeiT, Table 7, 300 epochs, 224 px, top-1): DeiT-Ti 72.2%, DeiT-S 79.8%,
DeiT-B 81.8%.
Data: TFDS ``imagenet2012`` prepared as ArrayRecord (manual download; see the README).
"""

from configs.common import base_config, vit_model, with_init_checkpoint

EXPECTED_TOP1 = {"Ti_16": 72.2, "S_16": 79.8, "B_16": 81.8}


def get_config(arg: str | None = "S_16"):
    variant = arg or "S_16"
    if variant not in EXPECTED_TOP1:
        raise ValueError(f"config argument {variant!r} is not one of {tuple(EXPECTED_TOP1)}")
    config = with_init_checkpoint(base_config())
    config.model = vit_model(f"ViT-{variant}", num_classes=1000, image_size=224,
                             drop_path_rate=0.1)
    config.dataset.name = "imagenet2012"
    config.dataset.eval_split = "validation"
    # timm: RandomResizedCrop(scale=(0.08, 1.0), bicubic), not big_vision's inception_crop
    # (TF's sampler, bilinear), which draws smaller crops on average.
    config.pp_train = ("decode|random_resized_crop(224,0.08,1.0,'bicubic')|flip_lr"
                       "|randaugment_timm(2,9,magnitude_std=0.5,increasing=True)"
                       "|normalize(0.485,0.456,0.406,0.229,0.224,0.225)"
                       "|random_erasing(0.25)")
    # timm evaluates at crop_pct 0.875: Resize(int(224 / 0.875)) with PIL's bicubic, then
    # CenterCrop(224); resize_small's big_vision default (TF area) would differ.
    eval_resize = int(224 / 0.875)
    config.pp_eval = (f"decode|resize_small({eval_resize},'bicubic',antialias=True)"
                      "|central_crop(224)|normalize(0.485,0.456,0.406,0.229,0.224,0.225)")
    config.batch_size = 1024
    # A multiple of the 32 cores of a TPU v3-32 (1000 is not); the last batch of the 50,000
    # validation images is padded and masked.
    config.eval_batch_size = 1024
    # Fields that follow the batch size are references to it, so that --config.batch_size=...
    # keeps 300 epochs, 5 of warmup, an evaluation every 5 and the learning rate per image.
    batch_size = config.get_ref("batch_size")
    steps_per_epoch = 1_281_167 // batch_size
    config.num_train_steps = steps_per_epoch * 300
    config.log_every_steps = 100
    config.eval_every_steps = steps_per_epoch * 5
    config.checkpoint_every_steps = 1000
    config.label_smoothing = 0.1
    config.mixup.mixup_alpha = 0.8
    config.mixup.cutmix_alpha = 1.0
    config.aug_repeats = 3
    config.ema_decay = 0.99996
    config.optimizer.learning_rate = batch_size.to_float() * (5e-4 / 512)
    config.optimizer.weight_decay = 0.05
    config.optimizer.grad_clip_norm = 0.0
    # DeiT's timm scheduler, changed once per epoch and a step behind (trainer.optimizers).
    config.schedule.name = "timm_cosine"
    config.schedule.steps_per_epoch = steps_per_epoch
    config.schedule.lag_epochs = 1
    config.schedule.warmup_steps = steps_per_epoch * 5
    # DeiT's warmup_lr 1e-6 and min_lr 1e-5 are not scaled with the batch: fractions of the
    # scaled peak.
    learning_rate = config.optimizer.get_ref("learning_rate")
    config.schedule.warmup_start_factor = 1e-6 / learning_rate
    config.schedule.end_learning_rate_factor = 1e-5 / learning_rate
    config.input_workers = 16
    config.mixed_precision = True
    return config
