"""Judging solvers: float64 reference solves, error and distribution metrics, peer samplers."""
