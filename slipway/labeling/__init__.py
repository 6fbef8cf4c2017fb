"""Labeling: annotation quality (agreement, annotator quality, consensus) and label issues."""
