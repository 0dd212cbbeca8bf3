"""Forward hooks that stream activations into importance statistics (no gradients, no storage).

Sites (docs/method.md §2): the input of ``down_proj`` (MLP neurons), the input of ``o_proj``
(concatenated head outputs), the outputs of every hidden norm of every layer (hidden
channels), and the residual stream before/after every layer (Block Importance).

Mixture-of-experts layers (§2, "Experts"): a forward hook on the experts module reads the
tokens each expert was routed and the router's weights, recomputes each expert's MLP on its
tokens, and records the expert's contribution ``sum_t g_te * ||E_e(x_t)||_2``, its token count,
and the input of its down projection (its neurons) over its routed tokens only. The shared
expert's neurons are the input of its ``down_proj``, over every token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..arch import ArchAdapter
from .aggregation import DEFAULT_SEQ_AGGREGATIONS, ChannelStatistics


class ImportanceRecorder:
    """Registers the hooks on a model and owns the running statistics.

    Set :attr:`mask` to the current batch's (B, S) attention mask (or None) before each
    forward; hooks read it to exclude padded tokens.
    """

    def __init__(self, model: nn.Module, adapter: ArchAdapter, *, layers_only: bool = False, block_stride: int = 8,
                 seq_aggregations: tuple[str, ...] = DEFAULT_SEQ_AGGREGATIONS):
        self.adapter = adapter
        self.layers = adapter.decoder_layers(model)
        arch = adapter.architecture(model.config)
        device = next(model.parameters()).device
        num_layers = arch.num_hidden_layers
        self.layers_only = layers_only
        seq = seq_aggregations
        self.arch = arch
        self.neurons = ChannelStatistics(num_layers, arch.intermediate_size, device, seq) if arch.intermediate_size else None
        self.heads = ChannelStatistics(num_layers, arch.num_attention_heads * arch.head_dim, device, seq)
        self.norms_per_layer = len(adapter.norms)
        self.channels = ChannelStatistics(self.norms_per_layer * num_layers, arch.hidden_size, device, seq)
        experts = arch.num_experts
        self.expert_neurons = ChannelStatistics(num_layers * experts, arch.moe_intermediate_size, device, seq) \
            if experts else None
        self.expert_contribution = torch.zeros(num_layers, experts, dtype=torch.float64, device=device)
        self.expert_tokens = torch.zeros(num_layers, experts, dtype=torch.float64, device=device)
        shared = arch.shared_expert_intermediate_size
        self.shared_neurons = ChannelStatistics(num_layers, shared, device, seq) if shared else None
        self._batch_shape: tuple[int, int] | None = None
        # Per-layer BI streams over every token; contiguous-block BI needs the states of all
        # layers at once, so it is estimated on every block_stride-th token (an unbiased
        # subsample that keeps the stored states ~1/block_stride of one batch's activations).
        self.block_stride = block_stride
        self.cos_next = torch.zeros(num_layers, dtype=torch.float64, device=device)
        self.tokens = torch.zeros(1, dtype=torch.float64, device=device)
        self.block_cos = torch.zeros(num_layers + 1, num_layers + 1, dtype=torch.float64, device=device)
        self.block_tokens = torch.zeros(1, dtype=torch.float64, device=device)
        self.mask: torch.Tensor | None = None
        self._layer_input: torch.Tensor | None = None
        self._block_states: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    # -- hooks ---------------------------------------------------------------------------
    def _record_input(self, stats: ChannelStatistics, site: int):
        def hook(module, args):
            stats.update(site, args[0], self.mask)
        return hook

    def _record_output(self, stats: ChannelStatistics, site: int):
        def hook(module, args, output):
            stats.update(site, output, self.mask)
        return hook

    def _record_flat_input(self, stats: ChannelStatistics, site: int):
        # inside an MoE block tokens are flattened to (B*S, C): restore (B, S, C) for the row statistics
        def hook(module, args):
            stats.update(site, args[0].reshape(*self._batch_shape, -1), self.mask)
        return hook

    def _record_experts(self, layer_index: int):
        def hook(module, args, kwargs, output):
            values = dict(zip(("hidden_states", "top_k_index", "top_k_weights"), args)) | kwargs
            self._expert_statistics(module, layer_index, values["hidden_states"], values["top_k_index"],
                                    values["top_k_weights"])
        return hook

    def _expert_statistics(self, experts: nn.Module, layer: int, hidden: torch.Tensor, index: torch.Tensor,
                           weights: torch.Tensor) -> None:
        """Recompute each expert on its routed real tokens; record its contribution, token count and neurons."""
        tokens, width = hidden.shape[0], self.arch.moe_intermediate_size
        real = torch.ones(tokens, dtype=torch.bool, device=hidden.device) if self.mask is None \
            else self.mask.reshape(-1).to(device=hidden.device, dtype=torch.bool)
        for e in range(self.arch.num_experts):
            token, slot = torch.where(index == e)
            keep = real[token]
            token, slot = token[keep], slot[keep]
            if token.numel() == 0:
                continue
            gate, up = F.linear(hidden[token], experts.gate_up_proj[e]).chunk(2, dim=-1)
            act = experts.act_fn(gate) * up                                       # (n, I): the down projection's input
            out = F.linear(act, experts.down_proj[e])
            g = weights[token, slot].double()
            self.expert_contribution[layer, e] += (g * out.double().norm(dim=-1)).sum().to(self.expert_tokens.device)
            self.expert_tokens[layer, e] += token.numel()
            full = act.new_zeros(tokens, width)
            full[token] = act
            routed = torch.zeros(tokens, dtype=act.dtype, device=act.device)
            routed[token] = 1
            self.expert_neurons.update(layer * self.arch.num_experts + e, full.view(*self._batch_shape, width),
                                       routed.view(self._batch_shape))

    def _record_residual(self, index: int, is_last: bool):
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._batch_shape = tuple(hidden.shape[:2])
            if index == 0:
                self._block_states.clear()
            self._layer_input = hidden              # a reference, not a copy
            self._block_states.append(self._unit_sample(hidden))

        def post_hook(module, args, kwargs, output):
            out = output[0] if isinstance(output, tuple) else output
            cos = F.cosine_similarity(self._layer_input.float().to(out.device), out.float(), dim=-1)   # (B, S)
            if self.mask is not None:
                cos = cos * self.mask.to(cos.device)
            self.cos_next[index] += cos.sum().double().to(self.cos_next.device)   # device_map: layers on any device
            self._layer_input = None
            if is_last:
                self._block_states.append(self._unit_sample(out))
                self._accumulate_block_cosines()
                self.tokens += float(self.mask.sum()) if self.mask is not None else out.shape[0] * out.shape[1]
        return pre_hook, post_hook

    def _sampled_mask(self) -> torch.Tensor | None:
        return None if self.mask is None else self.mask[:, :: self.block_stride]

    def _unit_sample(self, hidden: torch.Tensor) -> torch.Tensor:
        # Every block_stride-th token of (B, S, E) as (T', E) unit vectors; padded tokens
        # become zero rows and so add nothing to any dot product.
        h = F.normalize(hidden[:, :: self.block_stride].float(), dim=-1).to(self.cos_next.device)
        mask = self._sampled_mask()
        if mask is not None:
            h = h * mask.to(device=h.device, dtype=h.dtype).unsqueeze(-1)
        return h.reshape(-1, h.shape[-1])

    def _accumulate_block_cosines(self) -> None:
        # sum_t cos(h_i[t], h_j[t]) for all pairs (i, j) at once: the Gram matrix of the
        # flattened unit states of the sampled tokens.
        states = torch.stack(self._block_states).flatten(1)             # (L+1, T'*E)
        self.block_cos += (states @ states.T).double()
        mask = self._sampled_mask()
        self.block_tokens += float(mask.sum()) if mask is not None else self._block_states[0].shape[0]
        self._block_states.clear()

    # -- lifecycle -----------------------------------------------------------------------
    @contextlib.contextmanager
    def attached(self) -> Iterator["ImportanceRecorder"]:
        a = self.adapter
        last = len(self.layers) - 1
        try:
            for i, layer in enumerate(self.layers):
                pre, post = self._record_residual(i, i == last)
                self._handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
                self._handles.append(layer.register_forward_hook(post, with_kwargs=True))
                if self.layers_only:
                    continue
                hook = self._handles.append
                if self.neurons is not None:
                    hook(layer.get_submodule(a.down_proj).register_forward_pre_hook(self._record_input(self.neurons, i)))
                hook(layer.get_submodule(a.o_proj).register_forward_pre_hook(self._record_input(self.heads, i)))
                for k, norm in enumerate(a.hidden_norms(layer)):
                    site = self.norms_per_layer * i + k
                    hook(norm.register_forward_hook(self._record_output(self.channels, site)))
                if self.expert_neurons is not None:
                    hook(layer.get_submodule(a.experts).register_forward_hook(self._record_experts(i), with_kwargs=True))
                if self.shared_neurons is not None:
                    down = layer.get_submodule(f"{a.shared_expert}.down_proj")
                    hook(down.register_forward_pre_hook(self._record_flat_input(self.shared_neurons, i)))
            yield self
        finally:
            for h in self._handles:
                h.remove()
            self._handles.clear()
            self._block_states.clear()
            self._layer_input = None

    def all_reduce(self, parallel) -> None:
        """Sum every float64 accumulator over the processes of ``parallel`` (a DistInfo), in place.

        Every statistic is a sum over rows or tokens, so the sum of the processes' sums is the
        one-process statistic (to float64 rounding: the terms are added in another order).
        """

        if not parallel.distributed:
            return
        stats = [self.cos_next, self.tokens, self.block_cos, self.block_tokens]
        if not self.layers_only:
            stats += [t for s in self._width_statistics().values() for t in (s.sum, s.sumsq, s.rows)]
            stats += [self.expert_contribution, self.expert_tokens]
        for t in stats:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"layers.cos_next": self.cos_next, "layers.tokens": self.tokens,
               "layers.block_cos": self.block_cos, "layers.block_tokens": self.block_tokens}
        if not self.layers_only:
            for name, stats in self._width_statistics().items():
                out |= stats.state(name)
            if self.arch.num_experts:
                out |= {"experts.contribution": self.expert_contribution, "experts.tokens": self.expert_tokens}
        return {k: v.cpu() for k, v in out.items()}

    def _width_statistics(self) -> dict[str, ChannelStatistics]:
        found = {"neurons": self.neurons, "heads": self.heads, "channels": self.channels,
                 "expert_neurons": self.expert_neurons, "shared_neurons": self.shared_neurons}
        return {name: stats for name, stats in found.items() if stats is not None}


class SkipLayer(nn.Module):
    """Stands in for a removed decoder layer: returns its input hidden states unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def layers_removed(layers: nn.ModuleList, indices: list[int]) -> Iterator[None]:
    """Temporarily replace ``layers[i]`` for ``i`` in ``indices`` by :class:`SkipLayer`."""
    saved = {i: layers[i] for i in indices}
    try:
        for i in indices:
            layers[i] = SkipLayer()
        yield
    finally:
        for i, layer in saved.items():
            layers[i] = layer
