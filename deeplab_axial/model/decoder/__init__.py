"""Decoders and prediction heads."""
