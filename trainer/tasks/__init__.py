"""Tasks: classification, seq2seq and distillation plug into one training loop."""

from trainer.tasks.base import Task, create_task, register_task

__all__ = ["Task", "create_task", "register_task"]
