"""Losses: pixel-wise base losses, the Panoptic-DeepLab combination and the classification loss."""
