"""Environments the papers need, registered with gymnasium on import (ids `ctrlrl/...`)."""

from ctrlrl.envs import average_reward, bandit, frozen_lake, lot_sizing, reward_hacking, tomato

average_reward.register()
bandit.register()
frozen_lake.register()
lot_sizing.register()
tomato.register()
reward_hacking.register()
