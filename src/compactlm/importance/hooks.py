"""Forward hooks that stream activations into importance statistics (no gradients, no storage).

Sites (docs/method.md §2): the input of ``down_proj`` (MLP neurons), the input of ``o_proj``
(concatenated head outputs), the outputs of the two hidden norms of every layer (hidden
channels), and the residual stream before/after every layer (Block Importance).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
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
        self.neurons = ChannelStatistics(num_layers, arch.intermediate_size, device, seq)
        self.heads = ChannelStatistics(num_layers, arch.num_attention_heads * arch.head_dim, device, seq)
        self.channels = ChannelStatistics(2 * num_layers, arch.hidden_size, device, seq)
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

    def _record_residual(self, index: int, is_last: bool):
        def pre_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
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
                down = layer.get_submodule(a.down_proj)
                self._handles.append(down.register_forward_pre_hook(self._record_input(self.neurons, i)))
                self._handles.append(layer.get_submodule(a.o_proj).register_forward_pre_hook(self._record_input(self.heads, i)))
                for k, norm in enumerate(a.hidden_norms(layer)):
                    self._handles.append(norm.register_forward_hook(self._record_output(self.channels, 2 * i + k)))
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
        import torch.distributed as dist

        if not parallel.distributed:
            return
        stats = [self.cos_next, self.tokens, self.block_cos, self.block_tokens]
        if not self.layers_only:
            stats += [t for s in (self.neurons, self.heads, self.channels) for t in (s.sum, s.sumsq, s.rows)]
        for t in stats:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"layers.cos_next": self.cos_next, "layers.tokens": self.tokens,
               "layers.block_cos": self.block_cos, "layers.block_tokens": self.block_tokens}
        if not self.layers_only:
            out |= self.neurons.state("neurons") | self.heads.state("heads") | self.channels.state("channels")
        return {k: v.cpu() for k, v in out.items()}


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
