"""Environments the papers need, registered with gymnasium on import (ids `ctrlrl/...`)."""
