"""Monitoring of served models: data, embedding and prediction drift, and performance once labels
arrive, with reports and alerts."""
