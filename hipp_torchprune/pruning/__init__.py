"""Pruning math and orchestration: plans, calibration, scorers, allocators and the operator."""
