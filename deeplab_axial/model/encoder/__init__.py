"""Encoders (backbones) that return a dict of res2..res5 features with static metadata (contract: `base`).

Importing the package registers every encoder class with Keras, so that a serialised encoder config deserialises.
"""

from deeplab_axial.model.encoder import axial_resnet, deeplab2_axial_resnet  # noqa: F401
