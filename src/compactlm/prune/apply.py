"""Apply a prune plan: slice weights, derive the new config, build a standard HF model.

Pruning is a pure state-dict transformation followed by ``from_config`` +
``load_state_dict(strict=True)``: the new model is an ordinary transformers model with
renumbered ``layer_idx``, correct tying and no custom code. Which rows/columns each weight
loses is decided here from the adapter's module names (docs/method.md §3):

=================  =====================  ==========================
weight             rows (dim 0)           columns (dim 1)
=================  =====================  ==========================
q_proj             kept heads x head_dim  hidden
k_proj, v_proj     kept groups x head_dim hidden
o_proj             hidden                 kept heads x head_dim
gate/up_proj       kept neurons           hidden
down_proj          hidden                 kept neurons
norms, embeddings  hidden (norms)         hidden (embed_tokens, lm_head)
=================  =====================  ==========================
"""

from __future__ import annotations

import torch

from ..arch import ArchAdapter, adapter_for
from ..errors import CompactLMError
from .plan import PrunePlan


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + t for h in heads for t in range(head_dim)], dtype=torch.long)


def _take(t: torch.Tensor, dim: int, index: torch.Tensor | None) -> torch.Tensor:
    return t if index is None else t.index_select(dim, index.to(t.device)).contiguous()


def _layer_slicer(a: ArchAdapter, plan: PrunePlan, layer: int, hidden: torch.Tensor | None):
    """Map a parameter name inside layer ``layer`` to a function slicing it."""
    d = plan.source.head_dim
    q_rows = _head_rows(plan.heads[layer], d)
    kv_rows = _head_rows(plan.kv_groups[layer], d)
    neurons = torch.tensor(plan.neurons[layer], dtype=torch.long)
    rows_cols = {  # module name -> (row index, column index)
        a.q_proj: (q_rows, hidden), a.k_proj: (kv_rows, hidden), a.v_proj: (kv_rows, hidden),
        a.o_proj: (hidden, q_rows), a.gate_proj: (neurons, hidden), a.up_proj: (neurons, hidden),
        a.down_proj: (hidden, neurons), a.input_norm: (hidden, None), a.post_attention_norm: (hidden, None),
    }
    for name in a.head_norms:
        rows_cols[name] = (None, None)  # per-head norms act over head_dim, which is never pruned

    def slice_param(name: str, t: torch.Tensor) -> torch.Tensor:
        module, _, kind = name.rpartition(".")
        if module not in rows_cols:
            raise CompactLMError(f"Parameter '{name}' of layer {layer} is unknown to the '{a.model_type}' adapter; "
                                 "cannot prune it.")
        rows, cols = rows_cols[module]
        t = _take(t, 0, rows)
        return _take(t, 1, cols) if kind == "weight" and t.dim() == 2 else t

    return slice_param


class TensorSlicer:
    """The one per-tensor pruning rule, shared by :func:`prune_state_dict` and the streaming pruner.

    ``slicer(key, tensor)`` returns the student's ``(key, tensor)`` — layer indices renumbered,
    rows/columns taken as in the table above — or None when the tensor belongs to a dropped layer.
    Index tensors are built once per plan; each call touches one tensor only, so a checkpoint can
    be pruned one tensor at a time. Works on meta tensors too (shapes without data).
    """

    def __init__(self, plan: PrunePlan, adapter: ArchAdapter):
        self.adapter = adapter
        self.hidden = None if plan.hidden is None else torch.tensor(plan.hidden, dtype=torch.long)
        self.new_index = {old: new for new, old in enumerate(plan.layers)}
        self.slicers = {i: _layer_slicer(adapter, plan, i, self.hidden) for i in plan.layers}
        self.prefix = adapter.layers + "."
        self.embeddings = (f"{adapter.embed_tokens}.weight", f"{adapter.lm_head}.weight")

    def __call__(self, key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        a, prefix = self.adapter, self.prefix
        if key.startswith(prefix):
            index, _, name = key[len(prefix):].partition(".")
            layer = int(index)
            if layer not in self.new_index:
                return None
            return f"{prefix}{self.new_index[layer]}.{name}", self.slicers[layer](name, tensor)
        if key in self.embeddings:
            return key, _take(tensor, 1, self.hidden)
        if key.startswith(a.final_norm + "."):
            return key, _take(tensor, 0, self.hidden)
        return key, tensor  # e.g. lm_head.bias (vocab-sized): untouched


def prune_state_dict(state_dict: dict[str, torch.Tensor], plan: PrunePlan, adapter: ArchAdapter) -> dict[str, torch.Tensor]:
    """Return the student's state dict; keys of dropped layers vanish and the rest are renumbered."""
    slicer = TensorSlicer(plan, adapter)
    return dict(item for key, tensor in state_dict.items() if (item := slicer(key, tensor)) is not None)


def check_plan_source(config, plan: PrunePlan, adapter: ArchAdapter) -> None:
    """Raise unless ``plan`` was made for a model of ``config``'s architecture."""
    actual = adapter.architecture(config)
    if actual != plan.source:
        raise CompactLMError(
            f"The prune plan was made for {plan.source.to_dict()}, but the model is {actual.to_dict()}. "
            f"Use the model the plan (and its scores) came from."
        )


def apply_plan(model, plan: PrunePlan):
    """Build the pruned student as a fresh transformers model with ``model``'s dtype and device."""
    from transformers import AutoModelForCausalLM

    adapter = adapter_for(model.config)
    check_plan_source(model.config, plan, adapter)
    adapter.check_target(plan.target)
    config = adapter.pruned_config(model.config, plan.target, plan.layers)
    state = prune_state_dict(model.state_dict(), plan, adapter)
    param = next(model.parameters())
    student = AutoModelForCausalLM.from_config(config, dtype=param.dtype)
    missing, unexpected = student.load_state_dict(state, strict=False)
    # Tied models may list lm_head.weight as missing: it shares embed_tokens' storage.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == f"{adapter.lm_head}.weight")]
    if missing or unexpected:
        raise AssertionError(f"pruned state dict does not fit the pruned config: missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        student.tie_weights()
    student.generation_config = model.generation_config
    return student.to(param.device).eval()
