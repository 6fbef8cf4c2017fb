"""Feature computation (Ray Data) and the Feast feature store built on its output."""
