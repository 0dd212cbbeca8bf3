"""Write a student as a plain ``save_pretrained`` directory: the one exporter of compactlm.

The directory loads with ``AutoModelForCausalLM.from_pretrained`` and no custom code:
safetensors weights, config (explicit ``head_dim``), generation config, tokenizer, plus
``prune_plan.json`` and ``compactlm_provenance.json`` (when, the command, the software
versions, and what the caller adds) for the record.

:func:`write_model_dir` writes those files; two ways publish them: :func:`save_student` into a
new directory, atomically (temp dir, then rename), and :func:`publish_export` into an existing
distillation run directory next to its checkpoints, file by file with ``config.json`` last.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..io import atomic_dir
from ..provenance import write_provenance
from ..prune.plan import PLAN_FILE, PrunePlan


def write_model_dir(dest: str | Path, model, tokenizer, *, plan: PrunePlan | str | Path | None = None,
                    provenance: dict | None = None) -> Path:
    """Write ``model`` (+ tokenizer, plan, provenance) into the directory ``dest`` (created if missing).

    ``plan`` is a :class:`PrunePlan`, or the folder of a student whose ``prune_plan.json`` is copied
    when it has one. The provenance always holds ``created``, ``command`` and ``software``; the
    caller's ``provenance`` entries are added (and win).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(dest)
    if isinstance(plan, PrunePlan):
        plan.save(dest)
    elif plan is not None and (Path(plan) / PLAN_FILE).is_file():
        shutil.copy2(Path(plan) / PLAN_FILE, dest / PLAN_FILE)
    write_provenance(dest, provenance)
    return dest


def save_student(model, tokenizer, out: str | Path, *, plan: PrunePlan | None = None,
                 provenance: dict | None = None, overwrite: bool = False) -> Path:
    """Save ``model`` (+ tokenizer, plan, provenance) to the new directory ``out`` atomically; returns ``out``."""
    with atomic_dir(out, overwrite=overwrite) as tmp:
        write_model_dir(tmp, model, tokenizer, plan=plan, provenance=provenance)
    return Path(out)


def publish_export(run_dir: Path, write: Callable[[Path], object]) -> None:
    """Export into ``run_dir`` itself, next to checkpoints/ and metrics.jsonl, so the run loads as a model.

    ``write(folder)`` writes the export (usually through :func:`write_model_dir`) into a hidden temp
    folder; its files are renamed into place one by one, config.json last: a directory whose
    config.json is present holds a complete export.
    """
    tmp = run_dir / ".export-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    names = sorted(p.name for p in tmp.iterdir())
    names.sort(key=lambda n: n == "config.json")
    if (run_dir / "config.json").exists():
        os.unlink(run_dir / "config.json")  # the export is incomplete until config.json is back
    for name in names:
        with open(tmp / name, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp / name, run_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)
