"""Benchmark suite: pyautodiff against hand-written NumPy, PyTorch, JAX, HIPS autograd and micrograd.

Run ``python -m benchmarks`` (full run, a few minutes on 2 cores), ``python -m benchmarks --quick``
(seconds; proves the suite works end to end) or ``python -m benchmarks --only scalar_chain,small_mlp``.
See ``benchmarks/README.md``.

Nothing is imported here on purpose: thread counts and BLAS settings must be fixed in the
environment before NumPy is first imported, and ``benchmarks.run`` does that.
"""
