"""Importance scores: the saved result of one calibration pass, reusable for any prune.

Raw streaming moments are stored (not one finished score) so that every one of the nine
batch x sequence aggregations can be chosen at prune time without recomputing anything.
Files: ``importance.safetensors`` (tensors) + ``importance.json`` (metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..arch import Architecture
from ..errors import CompactLMError
from ..io import atomic_dir
from ..models import model_fingerprint
from ..readers import clip, load_safetensors, read_json_object, reading
from .aggregation import DEFAULT_AGGREGATION, finalize, parse_aggregation

TENSORS_FILE = "importance.safetensors"
META_FILE = "importance.json"
FORMAT = "compactlm.importance/1"


@dataclass
class ImportanceScores:
    """Activation statistics of one model on one calibration set.

    tensors:
        ``neurons.{sum,sumsq,rows}``  (L, k, I): input of each ``down_proj``
        ``heads.{sum,sumsq,rows}``    (L, k, H*d): input of each ``o_proj``
        ``channels.{sum,sumsq,rows}`` (nL, k, E): outputs of each layer's n hidden norms
        ``expert_neurons.{sum,sumsq,rows}`` (L*X, k, I_moe): input of each expert's down projection,
                          over the tokens routed to it (MoE models; site = layer * X + expert)
        ``experts.contribution`` (L, X): sum over real tokens routed to each expert of
                          ``g * ||expert output||_2`` (g: the router weight the family applies)
        ``experts.tokens`` (L, X): real tokens routed to each expert (top-k slots)
        ``shared_neurons.{sum,sumsq,rows}`` (L, k, S): input of the shared expert's down_proj
        (k = the sequence aggregations recorded, ``meta["seq_aggregations"]``)
        ``layers.cos_next`` (L,): sum over real tokens of cos(h_i, h_i+1), h_i = input of layer i
        ``layers.tokens`` (1,) real tokens behind ``layers.cos_next``
        ``layers.block_cos`` (L+1, L+1): sum of cos(h_i, h_j) over every 8th real token
        ``layers.block_tokens`` (1,) tokens behind ``layers.block_cos``
        ``layers.loss``   (L+1,) LM loss with layer i removed; entry L is the unpruned loss
                          (absent when the layer-loss pass was skipped)
        ``layers.task.<task>`` (L+1, L+1) accuracy on a zero-shot task with layers s..e-1
                          removed at [s, e]; NaN where not scored, the unpruned accuracy on
                          the diagonal (``meta["depth_tasks"][task]``: examples, lengths, source)

    With a criterion other than ``activation`` (``meta["criterion"]``), the width tensors are
    direct scores instead of moments: ``neurons.score`` (L, I), ``heads.score`` (L, H),
    ``channels.score`` (E,); the aggregation does not apply to them.
    """

    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)

    # -- width ---------------------------------------------------------------------------
    @property
    def criterion(self) -> str:
        """The width criterion these scores come from (``activation`` for files that predate the choice)."""
        return self.meta.get("criterion", "activation")

    def _finalize(self, prefix: str, aggregation) -> torch.Tensor:
        batch, seq = parse_aggregation(aggregation)
        t = self.tensors
        if f"{prefix}.score" in t:  # a direct-score criterion (magnitude, taylor, random)
            return t[f"{prefix}.score"].float()
        if f"{prefix}.sum" not in t:
            raise CompactLMError(
                "These scores hold layer metrics only (computed with layers_only), no width scores. "
                "Recompute importance without it to prune width."
            )
        recorded = tuple(self.meta.get("seq_aggregations", ("mean", "l2", "var")))
        return finalize(t[f"{prefix}.sum"], t[f"{prefix}.sumsq"], t[f"{prefix}.rows"], batch, seq, recorded)

    def neurons(self, aggregation=DEFAULT_AGGREGATION) -> torch.Tensor:
        """(L, I) importance of each MLP neuron in each layer ((L, 0) for a model without dense MLPs)."""
        arch = self.architecture
        if not arch.intermediate_size:
            return torch.zeros(arch.num_hidden_layers, 0)
        return self._finalize("neurons", aggregation)

    # -- mixture of experts --------------------------------------------------------------
    def experts(self) -> torch.Tensor:
        """(L, X) importance of each expert: its router-weighted output norm, averaged over all real tokens.

        ``I_e = (1/T) sum_{t routed to e} g_te ||E_e(x_t)||_2`` (0 for tokens not routed to e): the
        mean norm over its routed tokens, weighted by the router weight, times the fraction of tokens
        routed to it. An expert the router rarely picks contributes little, however large its output.
        """
        self._require_experts()
        return (self.tensors["experts.contribution"] / self.tensors["layers.tokens"].clamp_min(1)).float()

    def expert_tokens(self) -> torch.Tensor:
        """(L, X) real tokens routed to each expert during calibration (top-k slots)."""
        self._require_experts()
        return self.tensors["experts.tokens"].clone()

    def expert_neurons(self, aggregation=DEFAULT_AGGREGATION) -> torch.Tensor:
        """(L, X, I_moe) importance of each expert's neurons over the tokens routed to that expert."""
        self._require_experts()
        arch = self.architecture
        return self._finalize("expert_neurons", aggregation).view(arch.num_hidden_layers, arch.num_experts, -1)

    def shared_neurons(self, aggregation=DEFAULT_AGGREGATION) -> torch.Tensor:
        """(L, S) importance of each neuron of the shared expert (Qwen2-MoE)."""
        self._require_experts()
        return self._finalize("shared_neurons", aggregation)

    def routing_lines(self, show: int = 4) -> list[str]:
        """One line per layer: routed slots per expert (share), and the ``show`` least important experts."""
        tokens, importance = self.expert_tokens(), self.experts()
        lines = []
        for layer in range(tokens.shape[0]):
            share = tokens[layer] / tokens[layer].sum().clamp_min(1)
            weakest = torch.argsort(importance[layer])[:show].tolist()
            lines.append(f"layer {layer}: routed share per expert min {float(share.min()):.1%} max "
                         f"{float(share.max()):.1%}, {int((tokens[layer] == 0).sum())} never routed; "
                         f"least important experts {weakest}")
        return lines

    def _require_experts(self) -> None:
        if "experts.contribution" not in self.tensors:
            raise CompactLMError("These scores hold no expert statistics: the model is not a mixture of experts, or "
                                 "they were computed with layers_only. Recompute importance on the MoE model.")

    def heads(self, aggregation=DEFAULT_AGGREGATION) -> torch.Tensor:
        """(L, H) importance of each query head: L2 over head_dim of per-channel scores."""
        per_channel = self._finalize("heads", aggregation)            # (L, H*d), or (L, H) direct scores
        if "heads.score" in self.tensors:
            return per_channel
        num_layers = per_channel.shape[0]
        return per_channel.view(num_layers, self.architecture.num_attention_heads, -1).norm(dim=-1)

    def channels(self, aggregation=DEFAULT_AGGREGATION) -> torch.Tensor:
        """(E,) importance of each hidden channel, summed over every norm output in the network."""
        scores = self._finalize("channels", aggregation)
        return scores if "channels.score" in self.tensors else scores.sum(0)

    # -- depth ---------------------------------------------------------------------------
    def block_importance(self, length: int = 1) -> torch.Tensor:
        """(L - length + 1,) ShortGPT Block Importance of each contiguous block of ``length`` layers.

        ``BI = 1 - mean_tokens cos(h_start, h_start+length)``; length 1 is per-layer BI, over
        every token; longer blocks use the token subsample of ``layers.block_cos``.
        """
        if length == 1:
            return (1 - self.tensors["layers.cos_next"] / self.tensors["layers.tokens"].clamp_min(1)).float()
        cos, tokens = self.tensors["layers.block_cos"], self.tensors["layers.block_tokens"].clamp_min(1)
        num_layers = cos.shape[0] - 1
        starts = torch.arange(num_layers - length + 1)
        return (1 - cos[starts, starts + length] / tokens).float()

    def layer_loss(self) -> torch.Tensor:
        """(L,) LM loss of the model with each single layer removed."""
        if "layers.loss" not in self.tensors:
            raise CompactLMError(
                "These scores have no single-layer LM-loss metric (computed with --layer-loss-samples 0). "
                "Recompute importance with --layer-loss-samples > 0, or prune depth by 'bi' or 'block'."
            )
        return self.tensors["layers.loss"][:-1].clone()

    @property
    def depth_tasks(self) -> list[str]:
        """The zero-shot tasks scored with layer blocks removed (``--depth-tasks``)."""
        return sorted(k.removeprefix("layers.task.") for k in self.tensors if k.startswith("layers.task."))

    def task_accuracy(self, task: str, length: int) -> torch.Tensor:
        """(L - length + 1,) accuracy on ``task`` with the block of ``length`` layers starting at each index removed."""
        if task not in self.depth_tasks:
            have = f"they hold: {', '.join(self.depth_tasks)}" if self.depth_tasks else "they hold none"
            raise CompactLMError(
                f"These scores have no depth metric for task '{task}' ({have}). Recompute importance with "
                f"--depth-tasks {task} (and --depth-task-examples N), or prune depth by 'bi', 'loss' or 'block'."
            )
        acc = self.tensors[f"layers.task.{task}"]
        num_layers = acc.shape[0] - 1
        starts = torch.arange(num_layers - length + 1)
        row = acc[starts, starts + length]
        if torch.isnan(row).any():
            scored = self.meta.get("depth_tasks", {}).get(task, {}).get("lengths")
            raise CompactLMError(
                f"These scores have no '{task}' accuracy for blocks of {length} layers (scored lengths: {scored}). "
                f"Recompute importance with --depth-task-lengths including {length} (or without it: every length)."
            )
        return row.clone()

    @property
    def base_loss(self) -> float | None:
        loss = self.tensors.get("layers.loss")
        return None if loss is None else float(loss[-1])

    @property
    def architecture(self) -> Architecture:
        return Architecture(**self.meta["architecture"])

    # -- checks & I/O --------------------------------------------------------------------
    def check_matches(self, model) -> None:
        """Raise if these scores were computed on a different model."""
        expected = self.meta.get("fingerprint")
        actual = model_fingerprint(model)
        if expected != actual:
            raise CompactLMError(
                f"Scores were computed for model '{self.meta.get('model')}' (fingerprint {expected}), "
                f"not for this model (fingerprint {actual}). Recompute them with `compactlm importance` "
                f"on the model you are pruning."
            )

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        with atomic_dir(path, overwrite=overwrite) as tmp:
            save_file({k: v.contiguous().cpu() for k, v in self.tensors.items()}, str(tmp / TENSORS_FILE),
                      metadata={"format": FORMAT})
            (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, **self.meta}, indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "ImportanceScores":
        path = Path(path)
        if not (path / TENSORS_FILE).is_file() or not (path / META_FILE).is_file():
            raise CompactLMError(
                f"'{path}' is not an importance-scores directory (expected {TENSORS_FILE} and {META_FILE}). "
                f"Create one with `compactlm importance --out {path}`."
            )
        fix = f"Recompute it with `compactlm importance --out {path} --overwrite`."
        meta = read_json_object(path / META_FILE, "importance metadata file", fix)
        if meta.get("format") != FORMAT:
            raise CompactLMError(f"'{path}' has scores format {clip(meta.get('format'), 60)}; this compactlm reads "
                                 f"{FORMAT!r}.")
        scores = cls(tensors=load_safetensors(path / TENSORS_FILE, "importance scores file", fix), meta=meta)
        with reading(path / META_FILE, "importance metadata file", fix):
            scores.check_consistent()
        return scores

    def check_consistent(self) -> None:
        """The tensors and the metadata describe one model (a damaged or edited file fails here, not mid-prune)."""
        arch = self.architecture
        layers, t = arch.num_hidden_layers, self.tensors
        experts = arch.num_hidden_layers * arch.num_experts
        expected = {"neurons.sum": (layers, arch.intermediate_size), "heads.sum": (layers, None),
                    "channels.sum": (None, arch.hidden_size), "neurons.score": (layers, arch.intermediate_size),
                    "expert_neurons.sum": (experts, arch.moe_intermediate_size),
                    "experts.contribution": (layers, arch.num_experts),
                    "shared_neurons.sum": (layers, arch.shared_expert_intermediate_size),
                    "heads.score": (layers, arch.num_attention_heads), "channels.score": (arch.hidden_size,),
                    "layers.cos_next": (layers,)}
        expected |= {f"layers.task.{task}": (layers + 1, layers + 1) for task in self.depth_tasks}
        width = ("neurons.sum", "neurons.score", "heads.sum", "heads.score")
        if not self.meta.get("layers_only") and not any(k in t for k in width):
            raise ValueError(f"no width scores ({' or '.join(width)}) although {META_FILE} says layers_only is false")
        for name, shape in expected.items():
            if name not in t and name != "layers.cos_next":
                continue
            got = tuple(t[name].shape)
            if (shape[0] is not None and got[0] != shape[0]) or (len(shape) > 1 and shape[1] is not None and got[-1] != shape[1]):
                raise ValueError(f"tensor {name} has shape {got}, which does not fit the architecture in "
                                 f"{META_FILE} ({layers} layers)")
