"""Tasks: classification, seq2seq, distillation and sentence_distillation plug into one
training loop."""

from trainer.tasks.base import Task, create_task, register_task

__all__ = ["Task", "create_task", "register_task"]
