"""Encoders (backbones) that return a dict of res2..res5 features with static metadata."""
