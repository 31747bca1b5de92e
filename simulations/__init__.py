"""Experiment tooling: local Flower plumbing, the demo, baselines and benchmarks."""
