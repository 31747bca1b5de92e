"""The Flower ServerApp, the run folder and its plots."""
