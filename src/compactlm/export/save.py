"""Write a student as a plain ``save_pretrained`` directory, atomically.

The directory loads with ``AutoModelForCausalLM.from_pretrained`` and no custom code:
safetensors weights, config (explicit ``head_dim``), generation config, tokenizer, plus
``prune_plan.json`` and ``compactlm_provenance.json`` for the record.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

from ..io import atomic_dir
from ..prune.plan import PrunePlan

PROVENANCE_FILE = "compactlm_provenance.json"


def software_versions() -> dict[str, str]:
    import torch
    import transformers

    from .. import __version__

    return {"compactlm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def save_student(model, tokenizer, out: str | Path, *, plan: PrunePlan | None = None,
                 provenance: dict | None = None, overwrite: bool = False) -> Path:
    """Save ``model`` (+ tokenizer, plan, provenance) to ``out`` atomically; returns ``out``."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            plan.save(tmp)
        record = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv),
                  "software": software_versions(), **(provenance or {})}
        (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return Path(out)
