"""The encoder contract: what every backbone gives the models built on it (written down once, here).

An encoder is a Keras layer, subclass of `Encoder`, that maps normalised images (x / 127.5 - 1, float, static height
H and width W) [batch, H, W, 3] to a dict of endpoints:

  res2, res3, res4, res5   activated features [batch, ceil(H / stride), ceil(W / stride), channels]: res2 at stride
                           4, res3 at 8, res4 at min(16, output stride), res5 at the output stride (16 or 32; 8 where
                           the encoder supports it). Panoptic-DeepLab reads res5, res3 and res2.
  other keys               optional extra endpoints, e.g. 'backbone_output' (the activated output of deeplab2's
                           stacked decoder, MaX-DeepLab-L), listed in `feature_info` too.

`feature_info` = {endpoint: {'channels': c, 'stride': s}} is fixed at construction, before the encoder is built, so
that a model can build its heads from it; `feature_shapes` turns it into shapes for an input shape.
`classification_feature` names the endpoint a classifier pools (res5 unless the encoder says otherwise).

Models take an encoder (a layer, or its `keras.saving.serialize_keras_object` config, as keras-hub injects
backbones), so any encoder that keeps this contract plugs into `AxialDeepLab` and `AxialResNetClassifier`.
"""

from typing import Dict, Optional, Sequence, Tuple

import keras

from deeplab_axial import common

ENDPOINTS = (common.RES2, common.RES3, common.RES4, common.RES5)


class Encoder(keras.layers.Layer):
    """Base class of the encoders: the contract above; subclasses set `feature_info` in their constructor."""

    feature_info: Dict[str, Dict[str, int]]
    classification_feature: str = common.RES5

    def feature_shapes(self, input_shape: Sequence[Optional[int]]) -> Dict[str, Tuple[Optional[int], ...]]:
        """{endpoint: [batch, ceil(H / stride), ceil(W / stride), channels]} for images of `input_shape`."""
        return {key: (input_shape[0], -(-input_shape[1] // info['stride']), -(-input_shape[2] // info['stride']),
                      info['channels'])
                for key, info in self.feature_info.items()}
