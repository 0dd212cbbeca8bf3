"""The ``export`` stage of ``compactlm run``: the final student as GGUF files, and their rows in the eval.

``export: {gguf: [q8_0]}`` writes ``<run>/student.q8_0.gguf`` (one file per type) from the last
step's student, with the tokenizer copied from the GGUF the teacher came from. The eval stage
then scores each file through transformers' GGUF loader, so the table shows what quantization
costs next to the Hugging Face student.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ..export.gguf import export_gguf
from ..export.gguf_vocab import find_gguf_source
from ..models import llama_with_biases, load_model
from .records import GGUF_LABEL, EvalRow, ExportRecord, GGUFFile
from .run_dir import RunLayout

logger = logging.getLogger(__name__)


def export_stage(recipe, layout: RunLayout, student: Path) -> ExportRecord:
    """Write every ``recipe.export.gguf`` type of ``student``; the stage record lists the files."""
    model = load_model(str(student), dtype="float32", trust_remote_code=recipe.trust_remote_code,
                       with_tokenizer=False)
    source = find_gguf_source(student)
    files = []
    for quant in recipe.export.gguf:
        # overwrite: a resumed run may have written some types before it was stopped (each file is atomic)
        result = export_gguf(model, layout.gguf(quant), quant=quant, gguf_source=source, hf_dir=student,
                             tokenizer_pre=recipe.export.tokenizer_pre, overwrite=True)
        files.append(GGUFFile.from_dict({**result.to_dict(), "student": str(student)}))
    return ExportRecord(files=files)


def transformers_reads(arch: str | None) -> bool:
    """Whether transformers' GGUF loader knows the llama.cpp architecture ``arch`` (it spells the MoE ones
    ``qwen2_moe`` where llama.cpp writes ``qwen2moe``)."""
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    return arch is None or arch in GGUF_SUPPORTED_ARCHITECTURES or arch.replace("moe", "_moe") in \
        GGUF_SUPPORTED_ARCHITECTURES


def transformers_problem(f: GGUFFile) -> str | None:
    """Why transformers' GGUF loader cannot read ``f`` as the student (None: it can): an architecture it lacks
    (olmo2, granite, olmoe), or a llama file with biases (a hidden-pruned Qwen2), whose biases it would drop."""
    if not transformers_reads(f.arch):
        return f"transformers' GGUF loader has no '{f.arch}' architecture"
    # a missing file is left to the loader, which names it
    if f.arch == "llama" and Path(f.path).is_file() and llama_with_biases(f.path):
        return "written as llama arch with biases, which transformers' GGUF loader cannot read"
    return None


def gguf_entries(recipe, export: ExportRecord | None) -> list[tuple[str, str]]:
    """(label, path) of each exported file for the eval table, if the recipe asks to score them; a file
    transformers cannot read (:func:`transformers_problem`) is skipped with the reason."""
    if not recipe.export.evaluate or export is None:
        return []
    step = recipe.steps[-1].name
    entries = []
    for f in export.files:
        label = f"{step}: {GGUF_LABEL}{f.quant}"
        problem = transformers_problem(f)
        if problem is None:
            entries.append((label, f.path))
        else:
            logger.warning("eval %s: skipped: %s; score this file with llama.cpp (benchmarks/gguf_llamacpp.py)",
                           label, problem)
    return entries


def loader_mismatch(label: str, info: dict, rows: list[EvalRow]) -> str | None:
    """Why a GGUF file's transformers reading does not stand for the student, or ``None``.

    transformers' GGUF loader rebuilds the config from a few keys (it reads no ``head_dim`` for Qwen3,
    and no bias switches for Llama: those files are skipped before loading, :func:`transformers_problem`);
    when the rebuilt model differs from the student, its scores would describe a different network, so
    the row is skipped with this reason.
    """
    if GGUF_LABEL not in label:
        return None
    student = next((r for r in reversed(rows) if not r.is_gguf), None)
    if student is None:
        return None
    if info["architecture"] != student.architecture or info["parameters"]["total"] != student.parameters:
        return (f"transformers' GGUF loader rebuilds it as {info['architecture']} with "
                f"{info['parameters']['total']:,} parameters, not the student's {student.parameters:,}; "
                f"score this file with llama.cpp (benchmarks/gguf_llamacpp.py)")
    return None


def describe_exports(files: list[dict]) -> list[str]:
    """One line per file for the final printout."""
    return [f"gguf:    {f['path']}  ({f['quant']}, {f['bytes'] / 1e6:.1f} MB; llama.cpp: llama-cli -m {f['path']})"
            for f in files]
