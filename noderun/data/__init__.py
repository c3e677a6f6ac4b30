"""Datasets: MNIST (verified, offline-safe) and the on-device batching it is trained with."""
