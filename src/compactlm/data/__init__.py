"""Text sources → tokenised, packed, fixed-length blocks for calibration, distillation, validation.

``read_documents`` turns a file, folder, saved dataset or Hugging Face dataset name into a
list of documents; ``pack_documents`` turns documents into ``(N, seq_len)`` blocks separated by
EOS; ``load_blocks`` does both and draws seeded, disjoint train/held-out sets;
``iter_batches`` walks blocks in batches.
"""

from .packing import TokenBlocks, iter_batches, load_blocks, pack_documents, sample_blocks
from .sources import read_documents

__all__ = ["TokenBlocks", "iter_batches", "load_blocks", "pack_documents", "read_documents", "sample_blocks"]
