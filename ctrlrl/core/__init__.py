"""Machinery shared by every algorithm. Nothing here imports `ctrlrl.algos`."""
