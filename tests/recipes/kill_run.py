"""``compactlm run ARGS`` that kills itself at one point of one stage: ``python kill_run.py POINT SIGNAL ARGS...``.

POINT names where (see ``POINTS``); SIGNAL is ``SIGKILL`` (nothing runs after it: no ``finally``, no
cleanup) or ``SIGTERM`` (the CLI unwinds as on Ctrl-C and exits 143). The stage functions are wrapped
in place, so the run is otherwise the real command.
"""

from __future__ import annotations

import os
import signal
import sys

import compactlm.report
from compactlm.cli import main
from compactlm.recipes import eval_stage, gguf_stage, pipeline
from compactlm.search import ranking


def _die() -> None:
    # SIGTERM runs the process's own handler: the CLI's raises at once, the trainer's checkpoints the step first
    os.kill(os.getpid(), getattr(signal, SIGNAL))


def _on_call(module, name: str, call: int, after: bool = False) -> None:
    """Kill at the ``call``-th call of ``module.name`` (before it runs, or after it returns)."""
    real, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call and not after:
            _die()
        result = real(*args, **kwargs)
        if calls[0] == call and after:
            _die()
        return result

    setattr(module, name, wrapped)


def _in_training(module, step: int) -> None:
    """Kill when the training of ``module.distill`` reaches ``step`` (its earlier checkpoints are written)."""
    real = module.distill

    def wrapped(*args, **kwargs):
        def on_step(s: int) -> None:
            if s == step:
                _die()
        return real(*args, on_step=on_step, **kwargs)

    module.distill = wrapped


POINTS = {
    "importance": lambda: _on_call(pipeline, "estimate_importance", 1, after=True),   # scores computed, not saved
    "search-proxy": lambda: _on_call(ranking, "lm_loss", 3),                          # two candidates scored
    "search-distill": lambda: _in_training(ranking, 3),                               # inside a short distillation
    "prune": lambda: _on_call(pipeline, "prune", 1, after=True),                      # pruned, not yet saved
    "distill": lambda: _in_training(pipeline, 5),                                     # after the step-4 checkpoint
    "export": lambda: _on_call(gguf_stage, "export_gguf", 2),                         # one GGUF file written
    "eval": lambda: _on_call(eval_stage, "lm_loss", 2),                               # the teacher evaluated
    "report": lambda: _on_call(compactlm.report, "render_report", 1),
}

if __name__ == "__main__":
    point, SIGNAL, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    POINTS[point]()
    sys.exit(main(args))
