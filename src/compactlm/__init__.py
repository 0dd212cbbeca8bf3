"""compactlm: Minitron-style pruning and distillation for Hugging Face decoder LMs."""

from .errors import CompactLMError
from .models import load_model, load_tokenizer

__version__ = "0.1.0"
__all__ = ["CompactLMError", "load_model", "load_tokenizer", "__version__"]
