"""Documents → packed fixed-length token blocks, seeded train/held-out sampling, batching."""

from __future__ import annotations

import logging
import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CompactLMError
from .sources import read_documents

logger = logging.getLogger(__name__)

TOKENIZE_BATCH = 256  # documents per tokenizer call: fast tokenizers parallelise within a batch


def pack_documents(documents: list[str], tokenizer, seq_len: int) -> torch.Tensor:
    """Tokenise, join with EOS and cut into blocks.

    Each document is tokenised without special tokens and followed by
    ``tokenizer.eos_token_id``; the streams are concatenated and cut into non-overlapping
    blocks of ``seq_len`` tokens; the last partial block is dropped.

    Returns:
        ``(N, seq_len)`` int64 tensor, ``N = total_tokens // seq_len`` (may be 0).
    """
    _check_positive("seq_len", seq_len, "--seq-len")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CompactLMError(
            f"Tokenizer {type(tokenizer).__name__} has no eos_token; documents are separated by EOS when "
            f"packed. Set tokenizer.eos_token before loading data."
        )
    chunks: list[np.ndarray] = []
    for start in range(0, len(documents), TOKENIZE_BATCH):
        batch = documents[start:start + TOKENIZE_BATCH]
        # verbose=False: documents longer than model_max_length are fine, we cut them ourselves.
        ids = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for doc_ids in ids:
            chunks.append(np.asarray(doc_ids, dtype=np.int64))
            chunks.append(np.asarray([eos], dtype=np.int64))
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    n_blocks = len(flat) // seq_len
    logger.info("Packed %d documents into %d tokens: %d blocks of %d", len(documents), len(flat), n_blocks, seq_len)
    return torch.from_numpy(flat[: n_blocks * seq_len].reshape(n_blocks, seq_len).copy())


@dataclass
class TokenBlocks:
    """Training and held-out blocks cut from one text source, with their provenance."""

    train: torch.Tensor            # (N, seq_len) int64
    heldout: torch.Tensor | None   # (M, seq_len) int64, None when no held-out blocks were asked for
    source: str
    seq_len: int
    seed: int
    available_blocks: int = 0      # blocks of seq_len the whole source gives

    def describe(self) -> dict:
        """JSON-able provenance: source, seq_len, seed, block counts and token counts."""
        heldout = 0 if self.heldout is None else int(self.heldout.shape[0])
        return {
            "source": self.source,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "available_blocks": self.available_blocks,
            "train_samples": int(self.train.shape[0]),
            "train_tokens": int(self.train.numel()),
            "heldout_samples": heldout,
            "heldout_tokens": heldout * self.seq_len,
        }


def sample_blocks(
    blocks: torch.Tensor, num_samples: int | None, heldout_samples: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Seeded disjoint train/held-out selection from ``(B, T)`` blocks.

    One permutation of all ``B`` blocks (``torch.Generator`` seeded with ``seed``): held-out
    is its first ``heldout_samples``, train the next ``num_samples`` (all the rest for
    ``None``). So the held-out set does not move when ``num_samples`` changes, and a smaller
    ``num_samples`` gives a prefix of a larger one. Raises when ``B`` is too small.
    """
    available = int(blocks.shape[0])
    wanted_train = available - heldout_samples if num_samples is None else num_samples
    if wanted_train <= 0 or heldout_samples + wanted_train > available:
        asked = "all remaining" if num_samples is None else str(num_samples)
        raise CompactLMError(
            f"Too little text: the source gives {available} blocks of {blocks.shape[1]} tokens, but "
            f"{asked} training + {heldout_samples} held-out blocks were requested. "
            f"Use fewer --samples, a shorter --seq-len, or more text."
        )
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(available, generator=generator)
    heldout = blocks[order[:heldout_samples]] if heldout_samples else None
    train = blocks[order[heldout_samples:heldout_samples + wanted_train]]
    return train, heldout


def load_blocks(
    source: str,
    tokenizer,
    *,
    seq_len: int,
    num_samples: int | None = None,
    heldout_samples: int = 0,
    seed: int = 0,
    text_field: str = "text",
    dataset_config: str | None = None,
    split: str = "train",
) -> TokenBlocks:
    """Read ``source``, pack it into ``seq_len`` blocks and draw seeded train/held-out sets.

    The whole source is tokenised so that the selection (see :func:`sample_blocks`) does not
    depend on ``num_samples``. Returns ``train`` ``(num_samples, seq_len)`` and ``heldout``
    ``(heldout_samples, seq_len)`` (or ``None``), both int64.
    """
    _check_positive("seq_len", seq_len, "--seq-len")
    if num_samples is not None:
        _check_positive("num_samples", num_samples, "--samples")
    if heldout_samples < 0:
        raise CompactLMError(f"heldout_samples must be 0 or more, got {heldout_samples}.")
    documents = read_documents(source, text_field=text_field, dataset_config=dataset_config, split=split)
    blocks = pack_documents(documents, tokenizer, seq_len)                     # (B, seq_len)
    train, heldout = sample_blocks(blocks, num_samples, heldout_samples, seed)
    return TokenBlocks(train=train, heldout=heldout, source=source, seq_len=seq_len, seed=seed,
                       available_blocks=int(blocks.shape[0]))


def iter_batches(blocks: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive ``(batch_size, T)`` views of ``(N, T)`` blocks, in order; the last may be smaller."""
    _check_positive("batch_size", batch_size, "--batch-size")
    for start in range(0, blocks.shape[0], batch_size):
        yield blocks[start:start + batch_size]


def _check_positive(name: str, value: int, option: str) -> None:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value <= 0:
        raise CompactLMError(f"{name} must be a positive integer, got {value!r}. Set {option} to 1 or more.")
