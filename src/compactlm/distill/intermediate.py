"""Intermediate-state matching for depth-pruned students (``docs/method.md`` §4, best practice #6).

Student layer j came from teacher layer ``kept_layers[j]`` (the prune plan says so); the loss
is the cosine distance between their outputs, plus the same for the embedding outputs. When
the student is narrower, one shared learned ``nn.Linear(H_s, H_t)`` lifts its states to the
teacher width; that projection is trained and checkpointed but never exported.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import adapter_for
from ..errors import CompactLMError
from ..readers import read_json_object

PLAN_FILE = "prune_plan.json"


def read_prune_plan(student_dir: str | Path) -> dict | None:
    """The student's ``prune_plan.json`` as a dict, or None when it has none."""
    path = Path(student_dir) / PLAN_FILE
    if not path.is_file():
        return None
    return read_json_object(path, "prune plan", "Re-run `compactlm prune` or remove the file.")


def layer_map_from_plan(plan: dict | None, student_layers: int, teacher_layers: int,
                        given: list[int] | None = None) -> list[int]:
    """Teacher layer index for every student layer: ``given``, else the plan's kept layers, else identity."""
    if given is not None:
        layers, origin = list(given), "--layer-map"
    elif plan is not None and plan.get("kept", {}).get("layers") is not None:
        layers, origin = list(plan["kept"]["layers"]), "prune_plan.json kept.layers"
    elif student_layers == teacher_layers:
        return list(range(student_layers))
    else:
        raise CompactLMError(
            f"The student has {student_layers} layers and the teacher {teacher_layers}, and there is no prune "
            f"plan to match them. Pass --layer-map with {student_layers} teacher layer indices, or --intermediate off."
        )
    if len(layers) != student_layers or any(not 0 <= i < teacher_layers for i in layers):
        raise CompactLMError(
            f"{origin} = {layers} does not fit: expected {student_layers} teacher layer indices in [0, {teacher_layers})."
        )
    return layers


class StateRecorder:
    """Hooks that record the embedding output and chosen layer outputs on every forward.

    Hooks exist only inside ``with recorder.attached():`` and are removed on exit, also on an
    exception, so a model reused across runs never collects them (nor the activations they hold).
    ``pop()`` returns the ``1 + len(layers)`` recorded ``(B, T, H)`` tensors and clears them.
    """

    def __init__(self, model: nn.Module, layers: list[int]) -> None:
        self.model = model
        self.layers = list(layers)
        self._records: dict[int, torch.Tensor] = {}

    @contextlib.contextmanager
    def attached(self) -> Iterator["StateRecorder"]:
        adapter = adapter_for(self.model.config)
        decoder_layers = adapter.decoder_layers(self.model)
        handles = []
        try:
            handles.append(self.model.get_submodule(adapter.embed_tokens).register_forward_hook(self._hook(-1)))
            handles += [decoder_layers[i].register_forward_hook(self._hook(i)) for i in sorted(set(self.layers))]
            yield self
        finally:
            for handle in handles:
                handle.remove()
            self._records.clear()

    def _hook(self, key: int):
        def save(_module, _inputs, output):
            self._records[key] = output[0] if isinstance(output, (tuple, list)) else output
        return save

    def pop(self) -> list[torch.Tensor]:
        states = [self._records[-1]] + [self._records[i] for i in self.layers]
        self._records.clear()
        return states


class IntermediateStateLoss(nn.Module):
    """Cosine distance between matched hidden states, averaged over matched pairs.

    ``forward(student_states, teacher_states, mask)``: two lists of equal length of ``(B, T, H_s)``
    and ``(B, T, H_t)`` tensors (embedding output first, then matched layers) and a ``(B, T)`` mask;
    returns the masked *sum* over tokens of the per-token mean over pairs of ``1 − cos`` (scalar).
    """

    def __init__(self, student_width: int, teacher_width: int, hidden_init: list[int] | None = None) -> None:
        super().__init__()
        self.projection: nn.Linear | None = None
        if student_width != teacher_width:
            self.projection = nn.Linear(student_width, teacher_width, bias=False)
            if hidden_init is not None and len(hidden_init) == student_width:
                # Start from the channel selection the pruner made: student channel j = teacher channel kept[j].
                with torch.no_grad():
                    self.projection.weight.zero_()
                    self.projection.weight[torch.tensor(hidden_init), torch.arange(student_width)] = 1.0

    def forward(self, student_states: list[torch.Tensor], teacher_states: list[torch.Tensor],
                mask: torch.Tensor) -> torch.Tensor:
        assert len(student_states) == len(teacher_states)
        per_token = 0.0
        for s, t in zip(student_states, teacher_states):
            if self.projection is not None:
                s = self.projection(s.to(self.projection.weight.dtype))
            acc = torch.promote_types(s.dtype, torch.float32)
            per_token = per_token + (1.0 - F.cosine_similarity(s.to(acc), t.to(acc), dim=-1))  # (B, T)
        return (per_token / len(student_states) * mask).sum()
