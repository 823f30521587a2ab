"""ctrlrl: research RL algorithms on shared, fast, reproducible machinery."""

from ctrlrl.api import list_algos, load, make
from ctrlrl.core.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__", "list_algos", "load", "make"]
