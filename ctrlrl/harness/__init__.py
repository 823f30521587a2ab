"""Experiment harness: seed × env × algorithm sweeps (local processes or Ray), stable-baselines3
twins run through the same protocol, and result reports with honest statistics."""
