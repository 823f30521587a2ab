"""Environments the papers need, registered with gymnasium on import (ids `ctrlrl/...`)."""

from ctrlrl.envs import lot_sizing

lot_sizing.register()
