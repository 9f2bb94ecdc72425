"""Benchmark cases per op (importable, so ``adaptkern bench`` works from an installed
package) and the timing helpers they share. The pytest-benchmark suite and the GPU
scripts under ``benchmarks/`` call into this package."""
