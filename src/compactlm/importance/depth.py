"""Layer metrics that need extra evaluation passes with layers removed (docs/method.md §2, depth).

* ``loss``: LM loss with each single layer removed (``layers.loss``).
* ``task:<name>``: accuracy on a zero-shot task with each contiguous block of layers removed
  (``layers.task.<name>``), the follow-up paper's third metric (Winogrande there); pruning
  drops the block whose removal keeps the most accuracy.

Block Importance needs no extra pass: the calibration hooks record it (hooks.py).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import torch

from ..arch import adapter_for
from ..config import EvalArgs
from ..errors import CompactLMError
from ..evaluate import ChoiceTask, TargetTask, get_task, run_task
from ..evaluate.task_data import load_rows
from ..parallel import DistInfo
from ..progress import progress
from .hooks import layers_removed
from .loss import lm_loss

logger = logging.getLogger(__name__)

TASK_SEED = 1234  # the example subset `compactlm eval --limit N` takes (evaluate.select's default seed)


def task_tensor_name(task: str) -> str:
    return f"layers.task.{task}"


@contextlib.contextmanager
def layers_dropped(model, indices: Sequence[int]) -> Iterator[None]:
    """Temporarily make ``model`` the depth-pruned model without ``indices``: same outputs as
    ``apply_plan`` of a depth-only plan, with no copy of any weight.

    Unlike :func:`~compactlm.importance.hooks.layers_removed` (which leaves a pass-through in
    place), the kept layers are renumbered (``layer_idx``) and the config's layer count and
    per-layer lists follow, so a KV cache (the task scorer shares each question's prefix
    through one) sees the student's layer numbering, even when layer 0 is dropped.
    """
    adapter = adapter_for(model.config)
    layers = adapter.decoder_layers(model)
    config = model.config
    num_layers = len(layers)
    kept = [i for i in range(num_layers) if i not in set(indices)]
    arch = adapter.architecture(config).replace(num_hidden_layers=len(kept))
    pruned = adapter.pruned_config(config, arch, kept)
    fields = ["num_hidden_layers", "max_window_layers", *adapter.per_layer_config_lists]
    saved_config = {f: getattr(config, f) for f in fields if hasattr(config, f)}
    saved_layers = list(layers)
    numbered = [(m, m.layer_idx) for layer in saved_layers for m in layer.modules()
                if isinstance(getattr(m, "layer_idx", None), int)]
    try:
        for f in saved_config:
            setattr(config, f, getattr(pruned, f))
        layers._modules.clear()
        for new, old in enumerate(kept):
            layers.append(saved_layers[old])
            for m in saved_layers[old].modules():
                if isinstance(getattr(m, "layer_idx", None), int):
                    m.layer_idx = new
        yield
    finally:
        layers._modules.clear()
        for layer in saved_layers:
            layers.append(layer)
        for m, idx in numbered:
            m.layer_idx = idx
        for f, value in saved_config.items():
            setattr(config, f, value)


def layer_losses(model, blocks: torch.Tensor, batch_size: int, bf16: bool, show_progress: bool = True,
                 parallel: DistInfo | None = None) -> torch.Tensor:
    """(L + 1,) float64 LM loss over ``blocks`` with layer i removed; entry L is the unpruned loss.

    ``parallel``: each process takes a share of the batches (see :func:`~compactlm.importance.lm_loss`).
    """
    layers = adapter_for(model.config).decoder_layers(model)
    losses = []
    for i in progress(range(len(layers)), desc="layer loss", disable=None if show_progress else True):
        with layers_removed(layers, [i]):
            losses.append(lm_loss(model, blocks, batch_size, bf16, parallel))
    losses.append(lm_loss(model, blocks, batch_size, bf16, parallel))
    return torch.tensor(losses, dtype=torch.float64)


def block_lengths(num_layers: int, lengths: Sequence[int] | None) -> list[int]:
    """The block lengths to score: all of 1..L-1 by default; check a given list."""
    if lengths is None:
        return list(range(1, num_layers))
    bad = [n for n in lengths if not 1 <= n < num_layers]
    if bad:
        raise CompactLMError(f"--depth-task-lengths {','.join(map(str, lengths))}: block lengths must be in 1..{num_layers - 1} "
                             f"for a {num_layers}-layer model (got {bad}).")
    return sorted(set(lengths))


def task_block_accuracy(model, tokenizer, task: str, *, examples: int = 64, lengths: Sequence[int] | None = None,
                        batch_size: int = 16, bf16: bool = False, data_dir=None,
                        show_progress: bool = True, parallel: DistInfo | None = None) -> tuple[torch.Tensor, dict]:
    """Accuracy on ``task`` with every contiguous block of the given ``lengths`` removed.

    Each block is scored exactly as ``compactlm.evaluate.run_task(task, student, limit=examples)``
    scores the depth-pruned student (the same seeded subset of examples for every block);
    with ``parallel`` each evaluation's batches are shared out as ``run_task`` shares them.

    Returns:
        acc: (L + 1, L + 1) float64; ``acc[s, e]`` is the accuracy with layers s..e-1 removed,
            NaN for blocks not scored; the diagonal (nothing removed) is the unpruned accuracy.
        info: {"examples", "lengths", "metric", "source", "seed", "base"} for the scores' metadata.
    """

    spec = get_task(task)
    if not isinstance(spec, ChoiceTask | TargetTask):
        raise CompactLMError(f"--depth-tasks {task}: a depth task must report accuracy (a multiple-choice or "
                             f"target task), not perplexity; use --depth-metric loss for an LM-loss criterion.")
    if examples <= 0:
        raise CompactLMError(f"--depth-task-examples must be > 0 (got {examples}).")
    num_layers = len(adapter_for(model.config).decoder_layers(model))
    lengths = block_lengths(num_layers, lengths)
    rows = load_rows(spec.name, spec.source, data_dir)

    def accuracy() -> tuple[float, int]:
        options = EvalArgs(limit=examples, seed=TASK_SEED, batch_size=batch_size)   # `compactlm eval --limit N`
        out = run_task(spec.name, model, tokenizer, options, bf16=bf16, rows=rows, parallel=parallel)
        return out["metrics"]["acc"], out["n"]

    acc = torch.full((num_layers + 1, num_layers + 1), float("nan"), dtype=torch.float64)
    base, n = accuracy()
    acc.fill_diagonal_(base)
    blocks = [(s, s + length) for length in lengths for s in range(num_layers - length + 1)]
    for start, end in progress(blocks, desc=f"depth {spec.name}", disable=None if show_progress else True):
        with layers_dropped(model, range(start, end)):
            acc[start, end] = accuracy()[0]
    logger.info("depth task %s: %d blocks x %d examples, unpruned acc %.3f", spec.name, len(blocks), n, base)
    return acc, {"examples": n, "lengths": lengths, "metric": "acc", "source": rows[1], "seed": TASK_SEED, "base": base}
