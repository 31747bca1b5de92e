"""Datasets, partitioners and the embedded synthetic data."""
