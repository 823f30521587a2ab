"""Algorithm registry: name → Algorithm subclass. A new algorithm adds one line here."""

from __future__ import annotations

from ctrlrl.algos.a2pr import A2PR
from ctrlrl.algos.base import Algorithm
from ctrlrl.algos.loop import LOOP, UCRL2, RandomPolicy
from ctrlrl.algos.mdpo import MDPO, MDPOOff
from ctrlrl.algos.npg import HARPG, NHARPG, NPGIGT, PG, NPGMomentum
from ctrlrl.algos.odice import ODICE, ODICEIL
from ctrlrl.algos.orpo import ORPO, PPOADReg
from ctrlrl.algos.pdppo import PDPPO
from ctrlrl.algos.ppo import PPO
from ctrlrl.algos.sac import SAC
from ctrlrl.algos.td3 import TD3
from ctrlrl.algos.td3bc import BC, TD3BC

REGISTRY: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (PPO, SAC, TD3, TD3BC, BC, MDPO, MDPOOff, PDPPO, A2PR, ODICE, ODICEIL,
                              PG, NPGMomentum, NPGIGT, NHARPG, HARPG, ORPO, PPOADReg,
                              LOOP, UCRL2, RandomPolicy)}
