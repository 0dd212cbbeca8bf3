"""Distillation: retrain a pruned student against its teacher (docs/method.md §4), or fine-tune a model.

``losses``        logit losses registered by name; chunked LM-head + loss evaluation
``intermediate``  hidden-state matching for depth-pruned students
``teacher``       the borrowed, frozen teacher (never cast in place) and its outputs
``student``       student + losses in one module (what DDP wraps)
``setup``         the run built once: precision, modules, optimizer, resume
``steps``         one optimizer step's micro-batches, validation, a checkpoint
``trainer``       the recipe: AdamW + cosine loop, NaN stop, signals, export
``checkpoint``    atomic, resumable checkpoints
``distributed``   torchrun/accelerate process groups, the model wrapping, the resumable sampler
"""

from .config import LossArgs, TrainArgs
from .losses import LOSSES, ChunkedLogitLoss, make_loss, register_loss
from .trainer import TrainingDiverged, TrainResult, distill, finetune, train

__all__ = ["LOSSES", "ChunkedLogitLoss", "LossArgs", "TrainArgs", "TrainResult", "TrainingDiverged", "distill",
           "finetune", "make_loss", "register_loss", "train"]
