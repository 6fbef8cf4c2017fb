"""Slipway: a production ML platform on Ray."""
