"""Axial-DeepLab (Wang et al., ECCV 2020) and the Axial-ResNet ImageNet classifier as Keras 3 models.

Both take float32 images [batch, height, width, 3] in 0..255 and normalise them inside: to x / 127.5 - 1 (deeplab2),
or with torchvision's ImageNet mean and std (`input_normalization='imagenet'`, the official PyTorch models'), and an
encoder that keeps the contract of `encoder.base` (a layer, or its serialised config), so that any registered
backbone plugs in. Axial-DeepLab = encoder (e.g. Axial-ResNet: Inception stem, output stride 16, span 65) +
Panoptic-DeepLab decoder and heads; its outputs are resized to the input size (bilinear, align_corners) and the
offsets rescaled by the resize ratio, all float32:
  semantic_logits [B, H, W, num_classes], center_heatmap [B, H, W], offset_map [B, H, W, 2] (dy, dx in pixels).
"""

from typing import Dict, Optional, Union

import keras
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.model.decoder.panoptic_deeplab import InstanceLastLayers, PanopticDeepLabDecoder, prediction_conv
from deeplab_axial.model.encoder.base import Encoder
from deeplab_axial.resize import resize_align_corners, resize_offsets_align_corners

EncoderArg = Union[Encoder, dict]


def encoder_layer(encoder: EncoderArg) -> Encoder:
    """The encoder itself, or the one a `keras.saving.serialize_keras_object` config describes (left unbuilt: the model
    builds it at its own input size).

    Raises:
      ValueError: neither an `Encoder` nor the config of one.
    """
    if isinstance(encoder, dict):
        encoder = keras.saving.deserialize_keras_object({k: v for k, v in encoder.items() if k != 'build_config'})
    if not isinstance(encoder, Encoder):
        raise ValueError('`encoder` must be an Encoder layer (deeplab_axial.model.encoder.base) or its serialised '
                         f'config. Received: {type(encoder).__name__}')
    return encoder


def serialized_encoder(encoder: Encoder) -> dict:
    """The encoder's `keras.saving.serialize_keras_object` config without its build shape (the model's own build
    config holds the input shape), so that the model's config round-trips through JSON unchanged."""
    return {k: v for k, v in keras.saving.serialize_keras_object(encoder).items() if k != 'build_config'}


# torchvision's ImageNet statistics of 0..1 images, which the official PyTorch Axial-ResNets were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMALIZATIONS = ('symmetric', 'imagenet')


def normalize_image(images: tf.Tensor, dtype: str, normalization: str = 'symmetric') -> tf.Tensor:
    """0..255 float images -> x / 127.5 - 1 ('symmetric') or (x / 255 - mean) / std ('imagenet') in `dtype`.

    Raises:
      ValueError: height or width is not static (axial attention builds its windows from the static lengths;
        export a fixed input size, e.g. the crop size, as deeplab2 does).
    """
    if images.shape.rank != 4 or images.shape[1] is None or images.shape[2] is None or images.shape[3] != 3:
        raise ValueError('Axial models need images of static shape [batch, height, width, 3]. Received shape '
                         f'{images.shape}')
    if normalization == 'imagenet':
        return tf.cast((tf.cast(images, tf.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD, dtype)
    return tf.cast(tf.cast(images, tf.float32) / 127.5 - 1.0, dtype)


def _check_normalization(normalization: str) -> None:
    if normalization not in INPUT_NORMALIZATIONS:
        raise ValueError(f'`input_normalization` must be one of {INPUT_NORMALIZATIONS}. Received: {normalization!r}')


@keras.saving.register_keras_serializable(package='deeplab_axial')
class AxialDeepLab(keras.Model):
    """Panoptic segmentation model: encoder -> dual decoder -> semantic, center and offset predictions.

    Args:
      num_classes: semantic classes (Cityscapes 19, COCO 134 with void).
      encoder: the encoder (`encoder.base` contract: res2, res3 and res5 are read), or its serialised config.
      decoder_config: keyword arguments of `PanopticDeepLabDecoder` (branch and head widths); defaults are the paper's.
      bn_momentum: decoder batch-norm momentum.
      bn_epsilon: decoder batch-norm epsilon.
      use_sync_batchnorm: synchronise the decoder's batch statistics across replicas.
      input_normalization: 'symmetric' (x / 127.5 - 1) or 'imagenet' (see `normalize_image`).
      **kwargs: forwarded to `keras.Model`.
    """

    def __init__(self, num_classes: int, encoder: EncoderArg, decoder_config: Optional[dict] = None,
                 bn_momentum: float = 0.99, bn_epsilon: float = 1e-3, use_sync_batchnorm: bool = False,
                 input_normalization: str = 'symmetric', **kwargs):
        super().__init__(**kwargs)
        _check_normalization(input_normalization)
        self.num_classes = num_classes
        self.decoder_config = dict(decoder_config or {})
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_sync_batchnorm = use_sync_batchnorm
        self.input_normalization = input_normalization
        # === Layers ===
        self.encoder = encoder_layer(encoder)
        self.decoder = PanopticDeepLabDecoder(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
                                              use_sync_batchnorm=use_sync_batchnorm, name='decoder',
                                              **self.decoder_config)
        self.semantic_last_layer = prediction_conv(num_classes, 'semantic_last_layer')
        self.instance_last_layer = InstanceLastLayers(name='instance_last_layer')

    @property
    def checkpoint_items(self) -> Dict[str, keras.layers.Layer]:
        """Trackables keyed by common.CKPT_*; drop the last layers to fine-tune to another class count."""
        return {common.CKPT_ENCODER: self.encoder, common.CKPT_DECODER: self.decoder,
                common.CKPT_SEMANTIC_LAST_LAYER: self.semantic_last_layer,
                common.CKPT_INSTANCE_LAST_LAYER: self.instance_last_layer}

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        shapes = self.encoder.feature_shapes(input_shape)
        self.decoder.build(shapes)
        res2 = tuple(shapes[common.RES2][:-1])
        self.semantic_last_layer.build(res2 + (self.decoder.semantic_head.filters,))
        self.instance_last_layer.build([res2 + (self.decoder.center_head.filters,),
                                        res2 + (self.decoder.offset_head.filters,)])
        self.built = True

    def call(self, images: tf.Tensor, training: bool = False) -> Dict[str, tf.Tensor]:
        """images: float32 [batch, height, width, 3] in 0..255 (static height and width)."""
        size = images.shape[1:3]
        features = self.encoder(normalize_image(images, self.compute_dtype, self.input_normalization),
                                training=training)
        heads = self.decoder(features, training=training)
        semantic = self.semantic_last_layer(heads['semantic'])
        center, offset = self.instance_last_layer(heads['center'], heads['offset'])
        return {common.PRED_SEMANTIC_LOGITS_KEY: resize_align_corners(semantic, size),
                common.PRED_CENTER_HEATMAP_KEY: tf.squeeze(resize_align_corners(center, size), -1),
                common.PRED_OFFSET_MAP_KEY: resize_offsets_align_corners(offset, size)}

    def get_config(self) -> dict:
        return dict(name=self.name, num_classes=self.num_classes, encoder=serialized_encoder(self.encoder),
                    decoder_config=self.decoder_config, bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
                    use_sync_batchnorm=self.use_sync_batchnorm, input_normalization=self.input_normalization)


@keras.saving.register_keras_serializable(package='deeplab_axial')
class AxialResNetClassifier(keras.Model):
    """ImageNet classifier: encoder -> global average pool (of the encoder's `classification_feature`, res5 unless
    it says otherwise) -> dropout -> dense -> `logits` [batch, classes].

    Args:
      num_classes: output classes.
      encoder: the encoder (`encoder.base` contract), or its serialised config.
      dropout_rate: dropout on the pooled features in training (model_options.classification.dropout_rate).
      input_normalization: 'symmetric' (x / 127.5 - 1) or 'imagenet' (see `normalize_image`).
      **kwargs: forwarded to `keras.Model`.
    """

    def __init__(self, num_classes: int, encoder: EncoderArg, dropout_rate: float = 0.0,
                 input_normalization: str = 'symmetric', **kwargs):
        super().__init__(**kwargs)
        _check_normalization(input_normalization)
        if not 0.0 <= dropout_rate < 1.0:
            raise ValueError(f'AxialResNetClassifier: `dropout_rate` must be in [0, 1). Received: {dropout_rate}')
        self.num_classes = num_classes
        self.dropout_rate = dropout_rate
        self.input_normalization = input_normalization
        # === Layers ===
        self.encoder = encoder_layer(encoder)
        self.classification_head = keras.layers.Dense(num_classes, name='classification_head', dtype='float32')

    @property
    def checkpoint_items(self) -> Dict[str, keras.layers.Layer]:
        """Trackables keyed by common.CKPT_*."""
        return {common.CKPT_ENCODER: self.encoder, common.CKPT_CLASSIFICATION_HEAD: self.classification_head}

    def build(self, input_shape):
        if not self.encoder.built:
            self.encoder.build(input_shape)
        feature = self.encoder.classification_feature
        self.classification_head.build((None, self.encoder.feature_info[feature]['channels']))
        self.built = True

    def call(self, images: tf.Tensor, training: bool = False) -> Dict[str, tf.Tensor]:
        """images: float32 [batch, height, width, 3] in 0..255 -> {'logits': [batch, num_classes]}."""
        features = self.encoder(normalize_image(images, self.compute_dtype, self.input_normalization),
                                training=training)
        pooled = tf.reduce_mean(tf.cast(features[self.encoder.classification_feature], tf.float32), axis=[1, 2])
        if training and self.dropout_rate > 0:
            # A stateful op per replica (as DropPath): each replica draws its own mask; float32 under mixed precision.
            pooled = tf.nn.dropout(pooled, rate=self.dropout_rate)
        return {common.PRED_LOGITS_KEY: self.classification_head(pooled)}

    def get_config(self) -> dict:
        return dict(name=self.name, num_classes=self.num_classes, encoder=serialized_encoder(self.encoder),
                    dropout_rate=self.dropout_rate, input_normalization=self.input_normalization)
