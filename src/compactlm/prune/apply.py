"""Apply a prune plan: slice weights, derive the new config, build a standard HF model.

Pruning is a pure state-dict transformation followed by ``from_config`` +
``load_state_dict(strict=True)``: the new model is an ordinary transformers model with
renumbered ``layer_idx``, correct tying and no custom code. Which rows/columns each weight
loses is decided here from the adapter's module names (docs/method.md §3):

=====================  ==========================  ==========================
weight                 rows (dim 0)                columns (dim 1)
=====================  ==========================  ==========================
q_proj                 kept heads x head_dim       hidden
k_proj, v_proj         kept groups x head_dim      hidden
qkv_proj (fused)       the q, k and v rows above   hidden
o_proj                 hidden                      kept heads x head_dim
q/k projection norms   kept heads/groups x hd      -
gate/up_proj           kept neurons                hidden
gate_up_proj (fused)   kept gate and up rows       hidden
down_proj              hidden                      kept neurons
router (mlp.gate)      kept experts                hidden
experts.gate_up_proj   (X, 2I, E): kept experts, each expert's kept neurons (gate and up), hidden
experts.down_proj      (X, E, I): kept experts, hidden, each expert's kept neurons
shared expert          like a dense MLP; its gate keeps its one row, hidden columns
norms, embeddings      hidden (weight and bias)    hidden (embed_tokens, lm_head)
=====================  ==========================  ==========================

Gemma's embedding scale ``sqrt(hidden_size)`` is folded into the sliced embedding (see
:class:`TensorSlicer`), so the student computes the teacher's function with its own config.
"""

from __future__ import annotations

import math
import re

import torch
from transformers import AutoModelForCausalLM
from transformers.initialization import no_init_weights

from ..arch import ArchAdapter, adapter_for
from ..errors import CompactLMError
from .plan import PrunePlan


def _head_rows(heads: list[int], head_dim: int) -> torch.Tensor:
    return torch.tensor([h * head_dim + t for h in heads for t in range(head_dim)], dtype=torch.long)


def _take(t: torch.Tensor, dim: int, index: torch.Tensor | None) -> torch.Tensor:
    return t if index is None else t.index_select(dim, index.to(t.device)).contiguous()


def _expert_rule(experts: torch.Tensor, per_expert: list[torch.Tensor], hidden: torch.Tensor | None, width: int):
    """Slice the 3-D expert tensors: experts on dim 0, each kept expert's own neurons, hidden channels."""
    def slice_experts(kind: str, t: torch.Tensor) -> torch.Tensor:
        t = _take(t, 0, experts)
        if kind == "gate_up_proj":     # (X, 2I, E): rows [gate | up] of each expert
            t = torch.stack([_take(t[j], 0, torch.cat([n, width + n])) for j, n in enumerate(per_expert)])
            return _take(t, 2, hidden)
        if kind == "down_proj":        # (X, E, I)
            t = torch.stack([_take(t[j], 1, n) for j, n in enumerate(per_expert)])
            return _take(t, 1, hidden)
        raise CompactLMError(f"Expert tensor '{kind}' is unknown to compactlm; cannot prune it.")
    return slice_experts


def _layer_rules(a: ArchAdapter, plan: PrunePlan, layer: int, hidden: torch.Tensor | None) -> dict:
    """Module name -> (row index, column index) for every module of layer ``layer``."""
    src = plan.source
    d = src.head_dim
    q_rows = _head_rows(plan.heads[layer], d)
    kv_rows = _head_rows(plan.kv_groups[layer], d)
    rules = {a.o_proj: (hidden, q_rows)}
    if a.qkv_proj:       # fused rows [q | k | v]
        q_width, kv_width = src.num_attention_heads * d, src.num_key_value_heads * d
        rules[a.qkv_proj] = (torch.cat([q_rows, q_width + kv_rows, q_width + kv_width + kv_rows]), hidden)
    else:
        rules |= {a.q_proj: (q_rows, hidden), a.k_proj: (kv_rows, hidden), a.v_proj: (kv_rows, hidden)}
    if a.q_projection_norm:   # norms over the whole projection lose the removed heads' channels
        rules |= {a.q_projection_norm: (q_rows, None), a.k_projection_norm: (kv_rows, None)}
    rules |= {name: (None, None) for name in a.head_norms}   # per-head norms act over head_dim, never pruned
    rules |= {name: (hidden, None) for name in a.norms}
    if src.intermediate_size:       # dense MLP
        neurons = torch.tensor(plan.neurons[layer], dtype=torch.long)
        if a.gate_up_proj:   # fused rows [gate | up]
            rules[a.gate_up_proj] = (torch.cat([neurons, src.intermediate_size + neurons]), hidden)
        rules |= {name: (neurons, hidden) for name in (a.gate_proj, a.up_proj) if name}
        rules[a.down_proj] = (hidden, neurons)
    if src.is_moe:
        rules[a.router] = (torch.tensor(plan.experts[layer], dtype=torch.long), hidden)
        if a.shared_expert:
            shared = torch.tensor(plan.shared_neurons[layer], dtype=torch.long)
            rules |= {f"{a.shared_expert}.gate_proj": (shared, hidden), f"{a.shared_expert}.up_proj": (shared, hidden),
                      f"{a.shared_expert}.down_proj": (hidden, shared), a.shared_expert_gate: (None, hidden)}
    return rules


def _stored_expert_rule(a: ArchAdapter, experts: list[int], per_expert: list[torch.Tensor], hidden: torch.Tensor | None):
    """Checkpoints on disk hold one 2-D tensor per expert (``experts.3.gate_proj.weight``, Mixtral:
    ``block_sparse_moe.experts.3.w1.weight``; transformers fuses them on load): rename kept experts
    to their new index, slice each one's own neurons, drop the rest."""
    pattern = re.compile(rf"{re.escape(a.stored_experts)}\.(\d+)\.(\w+)\.weight")
    gate, up, down = a.stored_expert_projections
    new_index = {old: new for new, old in enumerate(experts)}

    def slice_stored(name: str, t: torch.Tensor) -> tuple[str, torch.Tensor | None] | None:
        match = pattern.fullmatch(name)
        if not match:
            return None
        expert, projection = int(match[1]), match[2]
        if expert not in new_index:
            return name, None                          # a removed expert
        j = new_index[expert]
        renamed = f"{a.stored_experts}.{j}.{projection}.weight"
        if projection in (gate, up):                   # (I, E)
            return renamed, _take(_take(t, 0, per_expert[j]), 1, hidden)
        if projection == down:                         # (E, I)
            return renamed, _take(_take(t, 0, hidden), 1, per_expert[j])
        raise CompactLMError(f"Expert tensor '{name}' is unknown to the '{a.model_type}' adapter; cannot prune it.")
    return slice_stored


def _layer_slicer(a: ArchAdapter, plan: PrunePlan, layer: int, hidden: torch.Tensor | None):
    """Map a parameter name inside layer ``layer`` to ``(new name, sliced tensor)``, or None when it is dropped."""
    rows_cols = _layer_rules(a, plan, layer, hidden)
    experts = stored = None
    if plan.source.is_moe:
        per_expert = [torch.tensor(n, dtype=torch.long) for n in plan.expert_neurons[layer]]
        experts = _expert_rule(torch.tensor(plan.experts[layer], dtype=torch.long), per_expert, hidden,
                               plan.source.moe_intermediate_size)
        stored = _stored_expert_rule(a, plan.experts[layer], per_expert, hidden)
        rows_cols[a.stored_router] = rows_cols[a.router]

    def slice_param(name: str, t: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        module, _, kind = name.rpartition(".")
        if experts is not None and module == a.experts:
            return name, experts(kind, t)
        if stored is not None and (found := stored(name, t)) is not None:
            return None if found[1] is None else found
        if module not in rows_cols:
            raise CompactLMError(f"Parameter '{name}' of layer {layer} is unknown to the '{a.model_type}' adapter; "
                                 "cannot prune it.")
        rows, cols = rows_cols[module]
        t = _take(t, 0, rows)
        return name, _take(t, 1, cols) if kind == "weight" and t.dim() == 2 else t

    return slice_param


class TensorSlicer:
    """The one per-tensor pruning rule, shared by :func:`prune_state_dict` and the streaming pruner.

    ``slicer(key, tensor)`` returns the student's ``(key, tensor)`` — layer indices renumbered,
    rows/columns taken as in the table above — or None when the tensor belongs to a dropped layer
    (or a dropped expert of a checkpoint stored per expert).
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
        # Gemma multiplies embeddings by sqrt(hidden_size), which the student computes from its own
        # (smaller) hidden_size: fold the ratio into the embedding so layer 0 sees the teacher's
        # scale, and, when the LM head shares that weight, divide it back out in the final norm.
        self.embed_gain = 1.0
        if adapter.embed_scale and plan.hidden is not None:
            self.embed_gain = math.sqrt(plan.source.hidden_size / plan.target.hidden_size)
        self.tied = plan.source.tie_word_embeddings

    def __call__(self, key: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor] | None:
        a, prefix = self.adapter, self.prefix
        if key.startswith(prefix):
            index, _, name = key[len(prefix):].partition(".")
            layer = int(index)
            if layer not in self.new_index:
                return None
            sliced = self.slicers[layer](name, tensor)
            return None if sliced is None else (f"{prefix}{self.new_index[layer]}.{sliced[0]}", sliced[1])
        if key in self.embeddings:
            tensor = _take(tensor, 1, self.hidden)
            if self.embed_gain != 1.0 and (key == self.embeddings[0] or self.tied):
                tensor = (tensor.double() * self.embed_gain).to(tensor.dtype)
            return key, tensor
        if key.startswith(a.final_norm + "."):
            tensor = _take(tensor, 0, self.hidden)
            if self.embed_gain != 1.0 and self.tied and key.endswith(".weight"):
                offset = a.norm_offset
                tensor = ((tensor.double() + offset) / self.embed_gain - offset).to(tensor.dtype)
            return key, tensor
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

    adapter = adapter_for(model.config)
    check_plan_source(model.config, plan, adapter)
    adapter.check_target(plan.target)
    config = adapter.pruned_config(model.config, plan.target, plan.layers)
    state = prune_state_dict(model.state_dict(), plan, adapter)
    param = next(model.parameters())
    # Every parameter comes from ``state`` (checked below): skip the random init, which for a 262K-token
    # embedding costs seconds per candidate of the search. Buffers (rotary frequencies, Gemma's embedding
    # scale) are computed in the modules' constructors and are kept.
    with no_init_weights():
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
