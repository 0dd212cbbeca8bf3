"""Checks for the lent GPU machine: shell entry points (``bash benchmarks/device/*.sh``) and their Python modules."""
