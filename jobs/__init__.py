"""Ray Job entrypoints: `python -m jobs.NAME --config configs/NAME.yaml [--set key=value ...]`."""
