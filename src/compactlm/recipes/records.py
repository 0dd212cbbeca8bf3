"""What ``compactlm run`` records in ``run_state.json``: one typed record per stage, plus the machine.

Stage names live here only: ``correction``, then per step ``<step>/importance``,
``<step>/search``, ``<step>/prune``, ``<step>/distill`` (:func:`stage_key`), then ``export`` and
``eval``. Each stage's record is a dataclass with ``to_dict``/``from_dict`` (like
:class:`~compactlm.prune.plan.PrunePlan`); the JSON keys are the field names. The pipeline
writes them, the report and the tests read them. ``sessions`` records, each time a run starts or
resumes, the software versions and the hardware it ran on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import CompactLMError
from ..hardware import cpu_name, device_kind, native_bf16
from ..provenance import software_versions
from ..readers import clip

CORRECTION, EXPORT, EVAL = "correction", "export", "eval"
IMPORTANCE, SEARCH, PRUNE, DISTILL = "importance", "search", "prune", "distill"
STEP_STAGES = (IMPORTANCE, SEARCH, PRUNE, DISTILL)
GGUF_LABEL = "GGUF "   # in the eval row label of an exported GGUF file: "<step>: GGUF q8_0"


def stage_key(step: str, stage: str) -> str:
    """The key of a step's stage in ``run_state.json``: ``student/importance``."""
    if stage not in STEP_STAGES:
        raise ValueError(f"stage {stage!r}: expected one of {STEP_STAGES}")
    return f"{step}/{stage}"


def _from_fields(cls, data: Any, what: str):
    """``cls(**data)`` for the keys that are fields of ``cls`` (newer keys are ignored)."""
    if not isinstance(data, dict):
        raise CompactLMError(f"{what} is a {type(data).__name__} ({clip(data, 60)}); expected an object.")
    fields = dataclasses.fields(cls)
    missing = [f.name for f in fields if f.name not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise CompactLMError(f"{what} lacks {', '.join(missing)} (has {clip(sorted(data), 120)}).")
    names = {f.name for f in fields}
    return cls(**{k: v for k, v in data.items() if k in names})


class Record:
    """``to_dict``/``from_dict`` of a record dataclass: the JSON keys are its field names."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        return _from_fields(cls, data, f"The {cls.__name__}")


@dataclass(kw_only=True)
class StageRecord(Record):
    """A finished stage: its outputs and how long it took."""

    seconds: float = 0.0


@dataclass(kw_only=True)
class MeasuredRecord(StageRecord):
    """A stage that ran a model: the precision it actually ran in, its speed and MFU."""

    precision: str | None = None
    """bf16 or fp32, as chosen (``hardware.PrecisionChoice.precision``)"""
    tokens_per_second: float | None = None
    mfu: float | None = None
    """model-FLOP utilisation against the GEMM rate measured in that precision"""


@dataclass(kw_only=True)
class CorrectionRecord(MeasuredRecord):
    model: str
    """the corrected teacher (a distillation run directory that loads as a model)"""


@dataclass(kw_only=True)
class ImportanceRecord(MeasuredRecord):
    scores: str
    teacher: str
    """the model that was scored: the recipe's teacher, the corrected one or the previous step's student"""


@dataclass(kw_only=True)
class SearchRecord(MeasuredRecord):
    winner: dict[str, int]
    """the chosen sizes per axis (hidden_size, num_hidden_layers, ...)"""
    name: str
    params: int
    rank_correlation: float | None = None
    retrained: str | None = None
    """the winner's short distillation (a model directory), if it got one"""


@dataclass(kw_only=True)
class PruneRecord(StageRecord):
    model: str
    architecture: dict[str, int]


@dataclass(kw_only=True)
class DistillRecord(MeasuredRecord):
    model: str
    """the student: the distillation run directory, or the prune when ``tokens`` is 0"""
    tokens: int
    initialised_from: str | None = None
    continues_search: bool = False
    """whether the student started from the search's short distillation of the winner"""
    gemm_gflops: dict[str, float] | None = None


@dataclass(kw_only=True)
class GGUFFile(Record):
    """One exported GGUF file (``export.gguf.GGUFExport.to_dict()`` plus the student it came from)."""

    path: str
    quant: str
    bytes: int
    tokenizer: str
    student: str
    arch: str | None = None
    tensors: int | None = None
    f16_fallback: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class ExportRecord(StageRecord):
    files: list[GGUFFile] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict) -> "ExportRecord":
        record = _from_fields(cls, data, "The ExportRecord")
        record.files = [GGUFFile.from_dict(f) for f in record.files]
        return record


@dataclass(kw_only=True)
class EvalRow(Record):
    """One evaluated model: label, where it is, its size, architecture and scores."""

    model: str
    path: str
    parameters: int
    breakdown: dict[str, int]
    architecture: dict[str, Any]
    metrics: dict[str, float]
    precision: str | None = None
    continuations: list[dict] = field(default_factory=list)
    """greedy continuations of the eval prompts: [{"prompt", "text"}]"""

    @property
    def is_gguf(self) -> bool:
        return GGUF_LABEL in self.model


@dataclass(kw_only=True)
class EvalRecord(StageRecord):
    """The eval stage; ``eval.json`` holds the same without ``seconds``."""

    rows: list[EvalRow]
    heldout_blocks: int
    tasks: list[str] = field(default_factory=list)
    limit: int | None = None
    window: int | None = None

    @classmethod
    def from_dict(cls, data: dict) -> "EvalRecord":
        record = _from_fields(cls, data, "The EvalRecord")
        if not isinstance(record.rows, list):
            raise CompactLMError(f"The eval record's rows are {clip(record.rows, 60)}; expected a list.")
        record.rows = [EvalRow.from_dict(r) for r in record.rows]
        return record

    def eval_json(self) -> dict:
        """The content of ``eval.json``."""
        return {k: v for k, v in self.to_dict().items() if k != "seconds"}

    @property
    def student(self) -> EvalRow:
        """The final Hugging Face student: the last row that is not a GGUF file."""
        return next(r for r in reversed(self.rows) if not r.is_gguf)


_STAGE_TYPES: dict[str, type[StageRecord]] = {
    CORRECTION: CorrectionRecord, EXPORT: ExportRecord, EVAL: EvalRecord, IMPORTANCE: ImportanceRecord,
    SEARCH: SearchRecord, PRUNE: PruneRecord, DISTILL: DistillRecord}


def record_type(key: str) -> type[StageRecord]:
    """The record class of a ``run_state.json`` stage key (``eval``, ``student/prune``, ...)."""
    kind = key if key in (CORRECTION, EXPORT, EVAL) else key.rpartition("/")[2] if "/" in key else None
    if kind not in _STAGE_TYPES:
        raise CompactLMError(f"Unknown stage {clip(key, 60)} in the run state; expected {CORRECTION}, {EXPORT}, "
                             f"{EVAL} or <step>/{{{','.join(STEP_STAGES)}}}.")
    return _STAGE_TYPES[kind]


@dataclass(kw_only=True)
class Hardware(Record):
    cpu: str
    """CPU model name (/proc/cpuinfo, else platform)"""
    cores: int | None
    threads: int
    """torch intra-op threads"""
    native_bf16: bool
    """bf16 arithmetic on the run's device (AMX/AVX512-BF16, CUDA bf16), as precision auto saw it"""
    gpus: list[str]
    device: str
    """``hardware.device_kind`` of the recipe's device"""

    @classmethod
    def here(cls, device: str) -> "Hardware":
        gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
            if torch.cuda.is_available() else []
        return cls(cpu=cpu_name(), cores=os.cpu_count(), threads=torch.get_num_threads(),
                   native_bf16=native_bf16(device), gpus=gpus, device=device_kind(device))


@dataclass(kw_only=True)
class Session(Record):
    """Where and with what a run started (or was resumed)."""

    started: str
    software: dict[str, str]
    hardware: Hardware

    @classmethod
    def here(cls, device: str) -> "Session":
        return cls(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), software=software_versions(),
                   hardware=Hardware.here(device))

    @classmethod
    def from_dict(cls, data: dict) -> "Session":
        session = _from_fields(cls, data, "The Session")
        session.hardware = Hardware.from_dict(session.hardware)
        return session


@dataclass
class RunState(Record):
    """``run_state.json``: the recipe, the finished stages in order, the sessions that ran them, and the
    fingerprint of the token blocks (training and held-out) the run was started on."""

    recipe: dict
    stages: dict[str, StageRecord] = field(default_factory=dict)
    sessions: list[Session] = field(default_factory=list)
    data_fingerprint: str | None = None
    """``distill.checks.blocks_fingerprint`` of the run's blocks: a resume on other data is refused (None: a run
    written before it was recorded)"""

    def to_dict(self) -> dict:
        return {"recipe": self.recipe, "stages": {k: r.to_dict() for k, r in self.stages.items()},
                "sessions": [s.to_dict() for s in self.sessions], "data_fingerprint": self.data_fingerprint}

    @classmethod
    def from_dict(cls, data: dict) -> "RunState":
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise CompactLMError("The run state has no 'stages' object.")
        stages = {k: record_type(k).from_dict(v) for k, v in data["stages"].items()}
        recipe, fingerprint = data.get("recipe") or {}, data.get("data_fingerprint")
        if not isinstance(recipe, dict):
            raise CompactLMError(f"The run state's recipe is {clip(recipe, 60)}; expected an object.")
        return cls(recipe=recipe, stages=stages,
                   sessions=[Session.from_dict(s) for s in data.get("sessions") or []],
                   data_fingerprint=fingerprint if isinstance(fingerprint, str) else None)

    def get(self, key: str, kind: type[StageRecord]):
        """The record of stage ``key`` if it finished, else None; typed as ``kind``."""
        record = self.stages.get(key)
        assert record is None or isinstance(record, kind), (key, type(record))
        return record
