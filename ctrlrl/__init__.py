"""ctrlrl: research RL algorithms on shared, fast, reproducible machinery.

`import ctrlrl` registers the `ctrlrl/...` environments with gymnasium (gymnasium finds no plugins
by itself), so `gym.make("ctrlrl/LotSizing-v0")` works after it. The API (`make`, `load`,
`list_algos`) imports torch and every algorithm: it loads on first use, which keeps `import ctrlrl`
light for env users and for vector-env worker processes.
"""

import importlib
from typing import TYPE_CHECKING

import ctrlrl.envs  # noqa: F401  (registers the ctrlrl/... env ids)
from ctrlrl.core.errors import UserError

if TYPE_CHECKING:
    from ctrlrl.api import list_algos, load, make

__version__ = "0.1.0"
__all__ = ["UserError", "__version__", "list_algos", "load", "make"]
_API = ("list_algos", "load", "make")


_SUBPACKAGES = ("algos", "api", "cli", "core", "data", "envs", "harness")


def __getattr__(name: str):
    if name in _API:
        from ctrlrl import api

        return getattr(api, name)
    if name in _SUBPACKAGES:  # `ctrlrl.algos.ppo` after a bare `import ctrlrl`, as before the lazy API
        return importlib.import_module(f"ctrlrl.{name}")
    raise AttributeError(f"module 'ctrlrl' has no attribute {name!r}")
