"""Deployment: what a candidate costs where it will run.

- :mod:`.memory`: deployed memory (weights in the deployed type, KV cache, recurrent state), analytic.
"""

from .memory import DeployedMemory, deployed_memory, describe

__all__ = ["DeployedMemory", "deployed_memory", "describe"]
