"""The offline default: a small ViT on scikit-learn's handwritten digits.

Command (what ``make demo`` runs):
  python -m trainer.main --config=configs/vit_digits.py --workdir=workdirs/vit_digits

Data: the 1,797 real 8x8 digit images bundled with scikit-learn, registered as the local
TFDS dataset ``digits`` (fixed stratified split, 1,438 train / 359 test); nothing is downloaded.
Hardware and time: a 2-core CPU, under 5 minutes including compilation.
Expected result: >= 97% test accuracy (checked by tests/trainer/test_digits_accuracy.py).
"""

from configs.common import base_config, vit_model, with_init_checkpoint


def get_config(arg: str | None = None):
    config = with_init_checkpoint(base_config())
    config.task = "classification"
    config.model = vit_model(
        "ViT-micro", num_classes=10, image_size=8, patch_size=2, num_channels=1,
        hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128, dropout_rate=0.1,
        classifier="gap")
    config.dataset.name = "digits"
    config.pp_train = "value_range(-1,1)"
    config.pp_eval = "value_range(-1,1)"
    config.batch_size = 128
    config.eval_batch_size = 128
    config.num_train_steps = 1500
    config.log_every_steps = 100
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.label_smoothing = 0.1
    # 1,438 training images overfit without it: on 2026-11-24, 95.8% test accuracy without
    # mixup and with the class token, 98.1% with both changes (the demo command); with the
    # code of 2026-11-29 the demo gives 97.49% (`make demo`, README).
    config.mixup.mixup_alpha = 0.4
    config.optimizer.learning_rate = 2e-3
    config.optimizer.weight_decay = 0.05
    config.schedule.warmup_steps = 100
    return config
