"""Writes the deeplab2 encoder-family files that tests/test_deeplab2_family.py reads; make_fixtures.py runs it.

Same environment as make_fixtures.py (deeplab2 on PYTHONPATH, tf-keras). What it writes, all from deeplab2 itself:

cityscapes_configs.json: for deeplab2's five Cityscapes Axial-DeepLab configs (its
configs/cityscapes/axial_deeplab/*.textproto, read from the deeplab2 checkout), the config in canonical text form,
the trainable and non-trainable parameter counts of the whole Panoptic-DeepLab model deeplab2 builds from it, and
the drop-path keep probability of every block of its encoder.
axial_swidernet/, max_deeplab_s_backbone/, max_deeplab_l_backbone/: deeplab2's Panoptic-DeepLab from the fixture's
model_options.textproto (the configs' backbones and decoder at reduced widths and depths, drop path off), every
checkpoint item as its trainer saves them (max_deeplab_s_backbone/ also with the global step and the optimizer's
slots, as a real training checkpoint), and in outputs.npz the images, the encoder's endpoints (res2..res5 and,
for MaX-DeepLab-L, its stacked decoder's backbone_output), the semantic logits, center heatmap and offset map in
inference and training mode, and (not MaX-DeepLab-L, whose stacked decoder gets no gradient) the training-mode
gradient fingerprints of every trainable variable.
resnet50/, swidernet_sac/, axial_resnet50/: encoders alone, as ImageNet checkpoints: ResNet-50 at output stride 16
(atrous bottlenecks); SWideRNet with squeeze-and-excitation and switchable atrous convolution from stride 4, written
under Model Garden's `backbone/_encoder/` beside a classification `head` (deeplab2's trainer reads such files);
the GeLU Axial-ResNet-50 (output stride 32) on a 17 x 1537 image, whose stride-16 axis of 97 lies between 66 and
129, where deeplab2's query_shape 129 means global attention. outputs.npz: images and endpoints in inference mode,
and for the first two in training mode (train_<endpoint>).
"""

import json
import os

import numpy as np
import tensorflow as tf
from google.protobuf import text_format

from make_fixtures import HERE, _calibrate_batch_norms, _gradient_fingerprints, _randomise

# Odd sizes at every stride (17 -> 9 -> 5 -> 3 -> 2, 33 -> 17 -> 9 -> 5 -> 3): deeplab2 pads strided convolutions on
# both sides, Keras only at the end for even sizes.
PANOPTIC_IMAGE_SHAPE = [2, 17, 33, 3]
CITYSCAPES_CONFIGS = ('axial_swidernet_1_1_1_os16', 'axial_swidernet_1_1_3_os16', 'axial_swidernet_1_1_4.5_os16',
                      'max_deeplab_s_backbone_os16', 'max_deeplab_l_backbone_os16')
PANOPTIC_KEYS = ('semantic_logits', 'center_heatmap', 'offset_map')
# name -> (deeplab2 encoder name, encoder arguments, block_group_config, image shape, training-mode endpoints too).
ENCODERS = {
    'resnet50': ('resnet50', dict(width_multiplier=0.0625, stem_width_multiplier=0.125,
                                  backbone_layer_multiplier=0.5, output_stride=16), {}, PANOPTIC_IMAGE_SHAPE, True),
    'swidernet_sac': ('swidernet', dict(width_multiplier=0.03125, stem_width_multiplier=0.125,
                                        backbone_layer_multiplier=0.34, output_stride=16),
                      dict(use_squeeze_and_excite=True, use_sac_beyond_stride=4, drop_path_keep_prob=1.0),
                      PANOPTIC_IMAGE_SHAPE, True),
    'axial_resnet50': ('axial_resnet50', dict(width_multiplier=0.03125, stem_width_multiplier=0.125,
                                              backbone_layer_multiplier=0.5), {}, [1, 17, 1537, 3], False),
}


def _config_from_file(path: str, message):
    with open(path) as f:
        return text_format.Parse(f.read(), message)


def _keep_probabilities(encoder) -> dict:
    """Drop-path keep probability of every block, by deeplab2 block-group name."""
    return {layer.name: [float(p) for p in layer._drop_path_keep_prob] for layer in encoder.layers
            if hasattr(layer, '_drop_path_keep_prob')}


def make_config_counts(path: str) -> None:
    """Parameter counts (and keep probabilities) of deeplab2's five Cityscapes Axial-DeepLab models."""
    import deeplab2
    from deeplab2 import config_pb2
    from deeplab2.data import dataset
    from deeplab2.model import deeplab

    result = {}
    for name in CITYSCAPES_CONFIGS:
        path = os.path.join(os.path.dirname(deeplab2.__file__), 'configs', 'cityscapes', 'axial_deeplab',
                            f'{name}.textproto')
        config = _config_from_file(path, config_pb2.ExperimentOptions())
        model = deeplab.DeepLab(config, dataset.CITYSCAPES_PANOPTIC_INFORMATION)
        model(tf.keras.Input([65, 65, 3], batch_size=1), training=False)
        result[name] = dict(
            config=text_format.MessageToString(config),
            trainable=int(sum(np.prod(v.shape) for v in model.trainable_weights)),
            non_trainable=int(sum(np.prod(v.shape) for v in model.non_trainable_weights)),
            keep_probabilities=_keep_probabilities(model.checkpoint_items['encoder']))
        del model
    with open(path, 'w') as f:
        json.dump(result, f, indent=1, sort_keys=True)


def _endpoints(endpoints: dict, prefix: str = '', stacked_decoder: bool = False) -> dict:
    """res2..res5, and the stacked decoder's backbone_output (without one, deeplab2's backbone_output is res5)."""
    keys = ('res2', 'res3', 'res4', 'res5') + (('backbone_output',) if stacked_decoder else ())
    return {prefix + key: endpoints[key].numpy() for key in keys}


def make_panoptic_family_fixture(directory: str, with_optimizer: bool, with_gradients: bool) -> None:
    from deeplab2 import config_pb2
    from deeplab2.data import dataset
    from deeplab2.model import deeplab

    config = config_pb2.ExperimentOptions()
    _config_from_file(os.path.join(directory, 'model_options.textproto'), config.model_options)
    config.evaluator_options.merge_semantic_and_instance_with_tf_op = False  # no custom op
    model = deeplab.DeepLab(config, dataset.CITYSCAPES_PANOPTIC_INFORMATION)
    images = tf.random.stateless_uniform(PANOPTIC_IMAGE_SHAPE, seed=[3, 4], minval=0.0, maxval=255.0)
    model(images[:1], training=False)
    _randomise(model.weights, np.random.default_rng(0))
    _calibrate_batch_norms(model, images)
    # deeplab2's inference (its post-processing) takes one image at a time.
    per_image = [model(images[i:i + 1], training=False) for i in range(PANOPTIC_IMAGE_SHAPE[0])]
    outputs = {key: np.concatenate([result[key].numpy() for result in per_image]) for key in PANOPTIC_KEYS}
    encoder = model.checkpoint_items['encoder']
    stacked = config.model_options.backbone.name == 'max_deeplab_l_backbone'
    outputs.update(_endpoints(encoder(images / 127.5 - 1.0, training=False), stacked_decoder=stacked))
    items = dict(model.checkpoint_items)
    if with_optimizer:
        # As deeplab2's trainer saved its released checkpoints (TF 2.6): the step and the optimizer with its slots
        # under each variable's key (`.OPTIMIZER_SLOT`; one momentum step on a zero gradient creates them and moves
        # nothing; momentum has one slot, Adam two).
        optimizer = tf.keras.optimizers.legacy.SGD(1e-4, momentum=0.9)
        optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
        items.update(global_step=tf.Variable(1, dtype=tf.int64), optimizer=optimizer)
    prefix = os.path.join(directory, 'ckpt-1')
    tf.train.Checkpoint(**items).write(prefix)
    training = model(images, training=True)
    outputs.update({f'train_{key}': training[key].numpy() for key in PANOPTIC_KEYS})
    if with_gradients:
        outputs.update(_gradient_fingerprints(model, images, prefix))
    np.savez(os.path.join(directory, 'outputs.npz'), images=images.numpy(), **outputs)


def make_encoder_family_fixture(name: str, directory: str) -> None:
    from deeplab2.model.encoder import axial_resnet_instances
    from deeplab2.model.pixel_encoder import axial_resnet

    deeplab2_name, kwargs, block_group_config, shape, with_training = ENCODERS[name]
    if deeplab2_name == 'axial_resnet50':  # deeplab2's kMaX pixel encoder of that name
        encoder = axial_resnet.axial_resnet50(name=deeplab2_name, bn_layer=tf.keras.layers.BatchNormalization,
                                              block_group_config=dict(drop_path_schedule='linear',
                                                                      drop_path_keep_prob=1.0), **kwargs)
    else:
        encoder = axial_resnet_instances.get_model(deeplab2_name, bn_layer=tf.keras.layers.BatchNormalization,
                                                   block_group_config=block_group_config, **kwargs)
    pixels = tf.random.stateless_uniform(shape, seed=[5, 6], minval=0, maxval=256, dtype=tf.int32)
    images = tf.cast(pixels, tf.float32) / 127.5 - 1.0
    encoder(images, training=False)
    _randomise(encoder.weights, np.random.default_rng(0))
    _calibrate_batch_norms(encoder, images)
    os.makedirs(directory, exist_ok=True)
    if name == 'swidernet_sac':
        head = tf.keras.layers.Dense(10, name='head')
        head.build([None, 4 * int(round(512 * kwargs['width_multiplier']))])
        checkpoint = tf.train.Checkpoint(backbone=tf.train.Checkpoint(_encoder=encoder), head=head)
    else:
        checkpoint = tf.train.Checkpoint(encoder=encoder)
    checkpoint.write(os.path.join(directory, 'ckpt-1'))
    outputs = _endpoints(encoder(images, training=False))
    if with_training:
        outputs.update(_endpoints(encoder(images, training=True), 'train_'))
    np.savez(os.path.join(directory, 'outputs.npz'), pixels=pixels.numpy().astype(np.uint8), **outputs)


def make_all() -> None:
    make_config_counts(os.path.join(HERE, 'cityscapes_configs.json'))
    make_panoptic_family_fixture(os.path.join(HERE, 'axial_swidernet'), with_optimizer=False, with_gradients=True)
    make_panoptic_family_fixture(os.path.join(HERE, 'max_deeplab_s_backbone'), with_optimizer=True,
                                 with_gradients=True)
    make_panoptic_family_fixture(os.path.join(HERE, 'max_deeplab_l_backbone'), with_optimizer=False,
                                 with_gradients=False)
    for name in ENCODERS:
        make_encoder_family_fixture(name, os.path.join(HERE, name))
