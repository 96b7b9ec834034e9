"""Hyperparameter sweeps: an Optuna study whose trials are ordinary training jobs."""
