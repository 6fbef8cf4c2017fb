"""Online experiments: declared variants, sticky assignment, outcome events and their analysis."""
