"""Bayesian tuning with Optuna: search spaces, the objective, the study's storage, and its workers."""
