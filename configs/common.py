"""Fields every experiment config has, with their defaults (data only).

Each experiment file starts from ``base_config()`` and sets what differs. Field meanings:

- ``task``: ``classification``, ``seq2seq``, ``distillation`` or ``sentence_distillation``
  (the names registered with ``trainer.tasks.base.register_task``).
- ``model``: the model name and field overrides (``trainer.tasks`` builds it).
- ``dataset``: ``name`` (TFDS name, ``digits``, ``synthetic/<task>`` or ``stdlib_docstrings``;
  ``input_pipeline.datasets.get_source``), ``data_dir``,
  ``train_split``, ``eval_split``, ``source_kwargs``.
- ``batch_size`` / ``eval_batch_size``: global, over all devices and hosts.
- ``mesh_shape``: sizes of the ``data`` and ``fsdp`` mesh axes (-1: the rest).
- ``sharding.min_fsdp_size``: leaves this large or larger are split along ``fsdp``.
- ``optimizer`` / ``schedule``: see ``trainer.optimizers``.
- ``mixed_precision``: bfloat16 computation with float32 parameters.
- ``pack_examples``: seq2seq only; pack several examples into each training row.
- ``stop_after_step``: end this invocation early (checkpointed), e.g. to test resumption.
- ``average_last_checkpoints``: at the final step, also evaluate the mean parameters of the
  newest this many checkpoints (the final one included), logged as ``eval_averaged/*`` and
  kept in the summary as ``final_eval_averaged``; 1: off. Vaswani et al. average 5 (base)
  or 20 (big); ``keep_checkpoints`` must keep that many. ``python -m trainer.generate
  --average_last=N`` decodes with such an average.
- ``ema_decay``: keep an exponential moving average of the parameters (timm's and DeiT's
  model EMA: ``ema = decay * ema + (1 - decay) * params`` after every update; DeiT: 0.99996),
  checkpointed with the state and evaluated beside them at every evaluation as
  ``eval_ema/*`` (``final_eval_ema`` in the summary); 0: off.
- ``aug_repeats``: DeiT's repeated augmentation, each training image this many times in a row
  with its own augmentation (DeiT: 3); 1 (or timm's 0): off.
- ``init_checkpoint`` / ``init_checkpoint_grid`` / ``init_new_head`` (ViT configs,
  ``with_init_checkpoint``): an official-layout ``.npz`` to start from, its position grid
  when it is needed, and whether to start a new head even when the checkpoint's fits.
"""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "classification"
    config.seed = 0
    config.model = ml_collections.ConfigDict()
    config.dataset = ml_collections.ConfigDict(dict(
        name="", data_dir=ml_collections.FieldReference(None, field_type=str),
        train_split="train", eval_split="test", source_kwargs={}))
    config.pp_train = ""
    config.pp_eval = ""
    config.batch_size = 128
    config.eval_batch_size = 256
    config.input_workers = 0
    config.aug_repeats = 1
    config.num_train_steps = 1000
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    config.average_last_checkpoints = 1
    config.ema_decay = 0.0
    config.async_checkpoints = True
    config.stop_after_step = ml_collections.FieldReference(None, field_type=int)
    config.progress_bar = ml_collections.FieldReference(None, field_type=bool)
    config.label_smoothing = 0.0
    config.mixup = ml_collections.ConfigDict(dict(mixup_alpha=0.0, cutmix_alpha=0.0,
                                                  switch_prob=0.5))
    config.mixed_precision = False
    config.log_mfu = True  # train/mfu: XLA-counted step FLOPs over the device peak
    config.pack_examples = False
    config.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-3, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9,
        nesterov=False, weight_decay=0.0, grad_clip_norm=1.0, accum_steps=1, layer_decay=1.0))
    config.schedule = ml_collections.ConfigDict(dict(
        name="warmup_cosine", warmup_steps=100, end_learning_rate_factor=0.0))
    config.mesh_shape = ml_collections.ConfigDict(dict(data=-1, fsdp=1))
    config.sharding = ml_collections.ConfigDict(dict(min_fsdp_size=2**18))
    return config


def with_init_checkpoint(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Adds the fields of a ViT run that starts from pretrained parameters, as the official
    fine-tuning code and big_vision's ``model_init`` do:

    - ``init_checkpoint``: an official-layout ``.npz`` (``vit.load_pretrained``: head and
      position table adapted to ``config.model``); ``""`` starts from scratch.
    - ``init_checkpoint_grid``: the checkpoint's position grid ``(height, width)`` in
      patches, e.g. ``--config.init_checkpoint_grid=4,9``; needed only for a non-square table
      that ``vit.save_npz(grid_size=)`` did not record (None: recorded, else square).
    - ``init_new_head``: True starts the model's initial (zero) head even when the
      checkpoint's has the model's class count, as ``vit_jax`` always does; False keeps a
      head that fits (``vit.load_pretrained(new_head=)``).
    """
    config.init_checkpoint = ""
    config.init_checkpoint_grid = ml_collections.FieldReference(None, field_type=tuple)
    config.init_new_head = False
    return config


def vit_model(name: str, num_classes: int, **fields) -> ml_collections.ConfigDict:
    """``config.model`` for a ViT: the variant name plus every commonly overridden field of
    ``vit.VisionTransformer`` (so ``--config.model.<field>=...`` works on a locked config);
    ``fields`` override these defaults or add the variant's size fields."""
    model = ml_collections.ConfigDict(dict(
        name=name,
        num_classes=num_classes,
        # Typed object, not int: a (height, width) pair, e.g. --config.model.image_size=384,640
        # for fine-tuning at a non-square resolution, is accepted as well as a side length.
        image_size=ml_collections.FieldReference(224, field_type=object),
        num_channels=3,
        classifier="token",
        representation_size=ml_collections.FieldReference(None, field_type=int),
        distillation_token=False,
        dropout_rate=0.0,
        attention_dropout_rate=0.0,
        drop_path_rate=0.0,
        remat_policy="none",
        scan_layers=False,
        attention_implementation="xla",
        skip_unread_tokens=True,
    ))
    model.update(fields)
    return model


def transformer_model(name: str, vocab_size: int, **fields) -> ml_collections.ConfigDict:
    """``config.model`` for the seq2seq Transformer, with its commonly overridden fields."""
    model = ml_collections.ConfigDict(dict(
        name=name,
        vocab_size=vocab_size,
        max_length=256,
        share_embeddings=False,
        logits_via_embedding=False,
        position_embedding="sinusoidal",
        norm_placement="post",
        activation="relu",
        dropout_rate=0.1,
        attention_dropout_rate=0.0,
        remat_policy="none",
        scan_layers=False,
        attention_implementation="xla",
    ))
    model.update(fields)
    return model
