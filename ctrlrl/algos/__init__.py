"""Algorithm registry: name → Algorithm subclass. A new algorithm adds one line here."""

from __future__ import annotations

from ctrlrl.algos.base import Algorithm
from ctrlrl.algos.mdpo import MDPO, MDPOOff
from ctrlrl.algos.pdppo import PDPPO
from ctrlrl.algos.ppo import PPO
from ctrlrl.algos.sac import SAC
from ctrlrl.algos.td3 import TD3

REGISTRY: dict[str, type[Algorithm]] = {cls.name: cls for cls in (PPO, SAC, TD3, MDPO, MDPOOff, PDPPO)}
