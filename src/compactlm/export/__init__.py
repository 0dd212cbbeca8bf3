"""Export: a standard Hugging Face checkpoint plus compactlm's provenance."""

from .save import publish_export, save_student, write_model_dir

__all__ = ["publish_export", "save_student", "write_model_dir"]
