"""Inference on the user's own images: SavedModel and checkpoint runners, file handling, COCO panoptic output."""
