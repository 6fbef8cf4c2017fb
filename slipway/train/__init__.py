"""Distributed training with Ray Train."""
