"""Benchmarks, analytic problems and reports of steps versus quality."""
