"""Test-wide settings: offline, loopback-only, quiet."""

import os

# Before anything imports huggingface_hub (it reads these once): never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
