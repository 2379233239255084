"""Defaults that config.py declares and the light commands (status, plot) need without importing
transformers: defined here once."""

NUM_ITERATIONS = 5
MAX_STEPS = 300  # optimizer steps of each iteration
