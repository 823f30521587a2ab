"""Environments the papers need, registered with gymnasium on import (ids `ctrlrl/...`)."""

from ctrlrl.envs import bandit, frozen_lake, lot_sizing

bandit.register()
frozen_lake.register()
lot_sizing.register()
