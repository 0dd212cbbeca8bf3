"""The deployment a search budgets for: deployed memory (analytic) and speed measured on a runtime (docs/search.md).

``memory``    weights in the deployed type + KV cache + recurrent state of a candidate shape, analytic
``runtimes``  time one shape on transformers' ``generate`` or llama.cpp, with random weights
``latency``   measured speed per shape, cached; budgets, ties within the noise, the quality/speed frontier
"""

from .latency import Latency, measure, meets, pareto, shortfall, tied_ranks
from .memory import DeployedMemory, deployed_memory, describe
from .runtimes import budget_problems, check_budgets, import_llama_cpp, tokenizer_source

__all__ = ["DeployedMemory", "Latency", "budget_problems", "check_budgets", "deployed_memory", "describe",
           "import_llama_cpp", "measure", "meets", "pareto", "shortfall", "tied_ranks", "tokenizer_source"]
