"""Labeling: what to label next, annotation quality (agreement, annotator quality, consensus) and
label issues."""
