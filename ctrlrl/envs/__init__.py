"""Environments the papers need, registered with gymnasium on import (ids `ctrlrl/...`)."""

from ctrlrl.envs import frozen_lake, lot_sizing

frozen_lake.register()
lot_sizing.register()
