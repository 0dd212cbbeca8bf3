"""Export: a standard Hugging Face checkpoint plus compactlm's provenance."""

from .save import PROVENANCE_FILE, save_student

__all__ = ["PROVENANCE_FILE", "save_student"]
