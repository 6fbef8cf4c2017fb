"""Demo data, declared schemas and row validation."""
