"""Near-real-time features: outcome events on a stream, aggregated per user and article by a
long-running Ray consumer into Feast's online store (and its offline tables)."""
