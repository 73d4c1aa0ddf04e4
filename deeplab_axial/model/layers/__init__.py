"""Keras 3 layers of Axial-DeepLab: axial attention, its blocks, drop path."""
