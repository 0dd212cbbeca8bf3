"""Metric loggers behind one interface: JSON lines always, TensorBoard and W&B when installed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Protocol

from ..errors import CompactLMError, unknown_name

METRICS_FILE = "metrics.jsonl"


class MetricLogger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def close(self) -> None: ...


def _step(line: str) -> int | None:
    """The step of one metrics line; None for a blank or damaged line (a run killed mid-write leaves one)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record.get("step", 0) if isinstance(record, dict) and isinstance(record.get("step", 0), int) else None


class JsonlLogger:
    """One JSON object per line in ``<run>/metrics.jsonl``; on resume, lines past the resumed step are dropped."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text(errors="replace").splitlines()
                    if (step := _step(line)) is not None and step <= resume_step]
            self.path.write_text("".join(f"{line}\n" for line in kept))
        elif resume_step is None and self.path.exists():
            self.path.unlink()
        self._fh = open(self.path, "a")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._fh.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


class TensorBoardLogger:
    def __init__(self, run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional: pip install tensorboard

        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if isinstance(value, (int, float)):
                self._writer.add_scalar(key, value, step)

    def close(self) -> None:
        self._writer.close()


class WandbLogger:
    def __init__(self, run_dir: Path, config: dict) -> None:
        import wandb  # optional: pip install wandb

        self._run = wandb.init(dir=str(run_dir), config=config, resume="allow")

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def close(self) -> None:
        self._run.finish()


LOGGERS = {"jsonl": "built in", "tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def build_loggers(names: str, run_dir: Path, config: dict, resume_step: int | None) -> list[MetricLogger]:
    """Loggers for a comma-separated list of names; a missing optional package is a user error."""
    loggers: list[MetricLogger] = [JsonlLogger(run_dir, resume_step)]
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        if name not in LOGGERS:
            raise unknown_name("metric logger", name, LOGGERS)
        try:
            if name == "tensorboard":
                loggers.append(TensorBoardLogger(run_dir))
            elif name == "wandb":
                loggers.append(WandbLogger(run_dir, config))
        except ImportError as err:
            raise CompactLMError(f"--log-to {name} needs a package that is not installed ({err.name}). "
                                 f"Install it with: {LOGGERS[name]}") from err
    return loggers
