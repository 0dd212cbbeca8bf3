"""Distillation: retrain a pruned student against its teacher (docs/method.md §4), or fine-tune a model.

``losses``        logit losses registered by name; chunked LM-head + loss evaluation
``intermediate``  hidden-state matching for depth-pruned students
``trainer``       the recipe: AdamW + cosine, accumulation, bf16 autocast, validation, export
``checkpoint``    atomic, resumable checkpoints
``distributed``   torchrun/accelerate process groups and the resumable sampler
"""

from .config import LossArgs, TrainArgs
from .losses import LOSSES, ChunkedLogitLoss, make_loss, register_loss
from .trainer import TrainingDiverged, TrainResult, distill, finetune, train

__all__ = ["LOSSES", "ChunkedLogitLoss", "LossArgs", "TrainArgs", "TrainResult", "TrainingDiverged", "distill",
           "finetune", "make_loss", "register_loss", "train"]
