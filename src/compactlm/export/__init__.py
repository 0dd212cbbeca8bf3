"""Export: a standard Hugging Face checkpoint plus compactlm's provenance."""

from .save import PROVENANCE_FILE, publish_export, save_student, software_versions, write_model_dir, write_provenance

__all__ = ["PROVENANCE_FILE", "publish_export", "save_student", "software_versions", "write_model_dir",
           "write_provenance"]
