"""Inference on the user's own images: SavedModel and checkpoint runners, multi-scale averaging, file handling."""
