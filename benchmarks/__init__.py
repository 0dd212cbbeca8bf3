"""compactlm's benchmarks: scripts that measure and compare, run from the repository root as modules.

    python -m benchmarks.peers --quick ...
    python -m benchmarks.device.gpu_check --device cpu --tiny

What they share (paths, the ``__main__`` wrapper, subprocess arms, memory sampling) is in ``benchmarks.common``;
their figures land in ``benchmarks/results/``. Tests import them as ``benchmarks.<name>``.
"""
