"""Writes the deeplab2 files that tests/test_deeplab2_agreement.py reads; not run by the tests.

It needs deeplab2 itself, which our package does not depend on: a checkout of google-research/deeplab2 (these files
come from commit 64bc1c1) with its protos compiled, and tf-keras beside TensorFlow:

    python -m venv --system-site-packages /tmp/d2env && /tmp/d2env/bin/pip install "tf-keras~=2.21.0"
    (cd DEEPLAB2_PARENT && python -m grpc_tools.protoc -I. --python_out=. deeplab2/*.proto)
    PYTHONPATH=DEEPLAB2_PARENT /tmp/d2env/bin/python tests/data/deeplab2/make_fixtures.py

axial_deeplab_s/: deeplab2's Panoptic-DeepLab with its `axial_deeplab_s` encoder (Inception stem, output stride 16)
and the decoder of its Cityscapes Axial-DeepLab configs (1x1-projection "ASPP", depthwise-separable fusions and
heads) at the reduced widths of its model_options.textproto; every checkpoint item, as deeplab2's trainer saves
them.
axial_resnet_s/: deeplab2's `axial_resnet_s` encoder (7x7 conv stem, output stride 32) as item `encoder`.
Both at width 0.125, stem width 0.25 and blocks [1, 1, 2, 1] (layer multiplier 0.34, truncated), so that the files
stay small. Every variable is drawn at random (batch-norm scales and shifts included, so that no layer is an
identity), the batch-norm statistics are set to those of the images, and the two odd-sized images run in inference
mode; ckpt-1 holds the checkpoint, outputs.npz the images, the encoder's res2..res5 and (panoptic model) the
semantic logits, center heatmap, offset map, deeplab2's panoptic, semantic and instance predictions, and the first
three again in training mode (train_*), and fingerprints of the training-mode gradients of every trainable variable
(grad:<checkpoint key>, see `fingerprint`).
panoptic_deeplab_losses.npz: random targets (10% void), loss weights and predictions, and deeplab2's per-example
losses on them with its Cityscapes Axial-DeepLab loss options; the semantic loss again without void pixels.
panoptic_deeplab_targets.npz: a small panoptic label and deeplab2's training targets for it (`make_targets_fixture`).
resize.npz: deeplab2's resize_to_range sizes, its resizing and random scaling of an image and label, and its
undo_preprocessing of predictions back to the image size.
Then make_family_fixtures.py writes those of deeplab2's encoder family (its five Cityscapes Axial-DeepLab configs'
models, ImageNet encoders): see there.
"""

import os
import sys

os.environ['TF_USE_LEGACY_KERAS'] = '1'

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from deeplab2.model.encoder import axial_resnet_instances  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))  # tests/
from deeplab2_fingerprints import fingerprint, gradient_projection  # noqa: E402

WIDTHS = dict(width_multiplier=0.125, stem_width_multiplier=0.25, backbone_layer_multiplier=0.34)
IMAGE_SHAPE = [2, 33, 49, 3]
HERE = os.path.dirname(os.path.abspath(__file__))


def _randomise(weights, rng) -> None:
    for variable in weights:
        if 'moving_variance' in variable.name or 'gamma' in variable.name:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape))
        elif 'last_layer/kernel' in variable.name:
            # Strong enough that the predictions vary over the image: several classes, centers and instances.
            variable.assign(rng.normal(0.0, 3.0 / np.sqrt(variable.shape[-2]), variable.shape))
        elif 'moving_mean' in variable.name or 'beta' in variable.name or 'bias' in variable.name:
            variable.assign(rng.normal(0.0, 0.2, variable.shape))
        else:
            variable.assign(variable + rng.normal(0.0, 0.02, variable.shape))


def _calibrate_batch_norms(model, images) -> None:
    """Sets every moving mean and variance to the statistics of `images` (one training pass at momentum 0), so that
    features keep their spread through the random network instead of collapsing to constants."""
    layers = [layer for layer in model.submodules if hasattr(layer, 'moving_mean') and hasattr(layer, 'momentum')]
    for layer in layers:
        layer.momentum = 0.0
    model(images, training=True)
    for layer in layers:
        layer.momentum = 0.99


def _gradient_fingerprints(model, images, prefix: str) -> dict:
    """Training-mode gradients of sum(output * fixed weight) for every trainable variable, keyed by its checkpoint
    key (found by value: the random weights are all distinct)."""
    reader = tf.train.load_checkpoint(prefix)
    by_value = {reader.get_tensor(key).tobytes(): key for key in reader.get_variable_to_shape_map()
                if key.endswith('/.ATTRIBUTES/VARIABLE_VALUE')}
    projection = gradient_projection(images.shape)
    with tf.GradientTape() as tape:
        predictions = model(images, training=True)
        scalar = tf.add_n([tf.reduce_sum(predictions[key] * weight) for key, weight in projection.items()])
    variables = model.trainable_variables
    gradients = tape.gradient(scalar, variables)
    return {'grad:' + by_value[v.numpy().tobytes()]: fingerprint(tf.convert_to_tensor(g).numpy())
            for v, g in zip(variables, gradients)}


def _endpoints(encoder, images) -> dict:
    endpoints = encoder(images, training=False)
    return {key: endpoints[key].numpy() for key in ('res2', 'res3', 'res4', 'res5')}


def make_panoptic_fixture(directory: str) -> None:
    from google.protobuf import text_format
    from deeplab2 import config_pb2
    from deeplab2.data import dataset
    from deeplab2.model import deeplab

    config = config_pb2.ExperimentOptions()
    with open(os.path.join(directory, 'model_options.textproto')) as f:
        text_format.Parse(f.read(), config.model_options)
    # deeplab2's pure-TF post-processing (its default needs the custom op); the other evaluator options keep their
    # defaults.
    config.evaluator_options.merge_semantic_and_instance_with_tf_op = False
    model = deeplab.DeepLab(config, dataset.CITYSCAPES_PANOPTIC_INFORMATION)
    images = tf.random.stateless_uniform(IMAGE_SHAPE, seed=[1, 2], minval=0.0, maxval=255.0)
    model(images[:1], training=False)
    _randomise(model.weights, np.random.default_rng(0))
    _calibrate_batch_norms(model, images)
    # Shift the center bias so that about a tenth of the pixels pass deeplab2's center threshold (0.1): instances.
    heatmap = model(images[:1], training=False)['center_heatmap'].numpy()
    bias = model.checkpoint_items['instance_center_head_last_layer'].bias
    bias.assign(bias + (0.1 - np.quantile(heatmap, 0.9)))
    keys = ('semantic_logits', 'center_heatmap', 'offset_map', 'panoptic_pred', 'semantic_pred', 'instance_pred')
    # deeplab2's post-processing takes one image at a time.
    per_image = [model(images[i:i + 1], training=False) for i in range(IMAGE_SHAPE[0])]
    outputs = {key: np.concatenate([result[key].numpy() for result in per_image]) for key in keys}
    os.makedirs(directory, exist_ok=True)
    tf.train.Checkpoint(**model.checkpoint_items).write(os.path.join(directory, 'ckpt-1'))
    # Training mode (batch statistics in every batch norm, the attention's included), after the checkpoint is
    # written: the call also moves the moving averages.
    training = model(images, training=True)
    outputs.update({f'train_{key}': training[key].numpy() for key in keys[:3]})
    outputs.update(_gradient_fingerprints(model, images, os.path.join(directory, 'ckpt-1')))
    np.savez(os.path.join(directory, 'outputs.npz'), images=images.numpy(),
             **_endpoints(model.checkpoint_items['encoder'], images / 127.5 - 1.0), **outputs)


def make_encoder_fixture(name: str, output_stride: int, directory: str) -> None:
    encoder = axial_resnet_instances.get_model(
        name, output_stride=output_stride, bn_layer=tf.keras.layers.BatchNormalization, **WIDTHS)
    images = tf.random.stateless_uniform(IMAGE_SHAPE, seed=[1, 2], minval=-1.0, maxval=1.0)
    encoder(images, training=False)
    _randomise(encoder.weights, np.random.default_rng(0))
    _calibrate_batch_norms(encoder, images)
    os.makedirs(directory, exist_ok=True)
    tf.train.Checkpoint(encoder=encoder).write(os.path.join(directory, 'ckpt-1'))
    np.savez(os.path.join(directory, 'outputs.npz'), images=images.numpy(), **_endpoints(encoder, images))


# deeplab2's Cityscapes Axial-DeepLab loss options.
LOSS_OPTIONS = """
  semantic_loss { name: "softmax_cross_entropy" weight: 1.0 top_k_percent: 0.2 }
  center_loss { name: "mse" weight: 200 }
  regression_loss { name: "l1" weight: 0.01 }
"""


def make_loss_fixture(path: str) -> None:
    """Random targets, loss weights and predictions for 2 x 17 x 25 pixels (19 classes, some void) and deeplab2's
    per-example Panoptic-DeepLab losses on them."""
    from google.protobuf import text_format
    from deeplab2 import config_pb2
    from deeplab2.data import dataset
    from deeplab2.model.loss import loss_builder

    rng = np.random.default_rng(1)
    shape = (2, 17, 25)
    semantic = rng.integers(0, 19, shape)
    semantic[rng.random(shape) < 0.1] = 255
    arrays = dict(
        semantic_gt=semantic.astype(np.int32),
        instance_center_gt=rng.random(shape).astype(np.float32),
        instance_regression_gt=rng.normal(0.0, 5.0, shape + (2,)).astype(np.float32),
        semantic_loss_weight=rng.choice([1.0, 3.0], shape).astype(np.float32),
        center_loss_weight=rng.choice([0.0, 1.0], shape).astype(np.float32),
        regression_loss_weight=rng.choice([0.0, 1.0], shape).astype(np.float32),
        semantic_logits=rng.normal(0.0, 2.0, shape + (19,)).astype(np.float32),
        center_heatmap=rng.random(shape).astype(np.float32),
        offset_map=rng.normal(0.0, 5.0, shape + (2,)).astype(np.float32))
    options = text_format.Parse(LOSS_OPTIONS, config_pb2.LossOptions())
    with open(os.path.join(HERE, 'axial_deeplab_s', 'model_options.textproto')) as f:
        model_options = text_format.Parse(f.read(), config_pb2.ModelOptions())
    info = dataset.CITYSCAPES_PANOPTIC_INFORMATION
    loss = loss_builder.DeepLabFamilyLoss(options, model_options, num_classes=info.num_classes,
                                          ignore_label=info.ignore_label, ignore_depth=None,
                                          thing_class_ids=info.class_has_instances_list)
    tensors = {key: tf.constant(value) for key, value in arrays.items()}
    losses = loss(tensors, tensors)
    # Without void pixels too: deeplab2 takes the top-k fraction of all pixels, we of the valid ones.
    all_valid = np.where(semantic == 255, rng.integers(0, 19, shape), semantic).astype(np.int32)
    all_valid_losses = loss(dict(tensors, semantic_gt=tf.constant(all_valid)), tensors)
    np.savez(path, **arrays, semantic_gt_all_valid=all_valid,
             expected_all_valid_semantic_loss=all_valid_losses['semantic_loss'].numpy(),
             **{f'expected_{key}': value.numpy() for key, value in losses.items()})


def make_targets_fixture(path: str) -> None:
    """A 41 x 57 Cityscapes-style panoptic label (stuff, void, a crowd region, seven thing instances of 1 to 400
    pixels, two touching the border) and deeplab2's Panoptic-DeepLab targets for it: the sample generator in eval
    mode at the label's own size (no crop, scale or flip), sigma 8, instances under 100 pixels weighted 3."""
    from deeplab2.data import dataset
    from deeplab2.data import sample_generator

    info = dataset.CITYSCAPES_PANOPTIC_INFORMATION
    divisor = info.panoptic_label_divisor
    label = np.full((41, 57), 0 * divisor, np.int32)  # road
    label[:, 40:] = 2 * divisor  # building
    label[35:, :10] = info.ignore_label * divisor  # void
    label[2:12, 30:50] = 13 * divisor  # a crowd of cars (thing class, instance 0)
    for instance, (y0, y1, x0, x1, cls) in enumerate([(5, 25, 5, 25, 13), (20, 22, 30, 31, 11), (0, 6, 50, 57, 13),
                                                     (30, 41, 20, 28, 14), (14, 15, 14, 15, 11),
                                                     (25, 33, 44, 57, 17), (12, 18, 2, 9, 11)], start=1):
        label[y0:y1, x0:x1] = cls * divisor + instance
    generator = sample_generator.PanopticSampleGenerator(
        info._asdict(), is_training=False, crop_size=list(label.shape), sigma=8,
        focus_small_instances={'threshold': 100, 'weight': 3.0})
    sample = generator(dict(image=tf.zeros(label.shape + (3,), tf.uint8), image_name='x', label=tf.constant(label[:, :, None]),
                            height=label.shape[0], width=label.shape[1]))
    keys = ('semantic_gt', 'center_loss_weight', 'regression_loss_weight', 'semantic_loss_weight',
            'instance_center_gt', 'instance_regression_gt')
    np.savez(path, panoptic=label, **{f'expected_{key}': sample[key].numpy() for key in keys})


RESIZE_CASES = [(h, w, low, high, factor)
                for h, w in [(480, 640), (427, 640), (640, 480), (375, 500), (333, 500), (1024, 2048), (100, 3000),
                             (612, 612), (500, 281)]
                for low, high, factor in [(1025, 1025, 0), (641, 641, 0), (1025, 1025, 32), (641, 641, 16),
                                          (0, 1025, 0), (1025, 0, 0), (800, 1333, 0)]]


def make_resize_fixture(path: str) -> None:
    """deeplab2's resize_to_range sizes for `RESIZE_CASES` (0 = off), and its resize_to_range (61, 81) and
    randomly_scale_image_and_label (x0.6, x1.35) of a random 37 x 53 image and label."""
    from deeplab2.data.preprocessing import preprocess_utils

    sizes = [preprocess_utils.resize_to_range_helper((h, w), min_size=low or None, max_size=high or None,
                                                     factor=factor or None).numpy()
             for h, w, low, high, factor in RESIZE_CASES]
    rng = np.random.default_rng(3)
    image = tf.constant(rng.uniform(0.0, 255.0, (37, 53, 3)).astype(np.float32))
    label = tf.constant(rng.integers(0, 5000, (37, 53, 1)).astype(np.int32))
    arrays = {'cases': np.array(RESIZE_CASES), 'sizes': np.array(sizes), 'image': image.numpy(),
              'label': label.numpy()[..., 0]}
    ranged = preprocess_utils.resize_to_range(image, label, min_size=61, max_size=81)
    arrays.update(range_image=ranged[0].numpy(), range_label=ranged[1].numpy()[..., 0])
    for name, scale in (('small', 0.6), ('large', 1.35)):
        scaled = preprocess_utils.randomly_scale_image_and_label(image, label, tf.constant(scale, tf.float32))
        arrays.update({f'{name}_image': scaled[0].numpy(), f'{name}_label': scaled[1].numpy()[..., 0]})
    # undo_preprocessing: predictions of a 9 x 13 resized image inside a padded 12 x 16 input, back to 25 x 37.
    from deeplab2.model import utils
    predictions = {'panoptic_pred': tf.constant(rng.integers(0, 5000, (1, 12, 16)).astype(np.int32)),
                   'semantic_probs': tf.constant(rng.random((1, 12, 16, 3)).astype(np.float32))}
    restored = utils.undo_preprocessing(dict(predictions), [9, 13], [25, 37])
    arrays.update({f'undo_{key}': value.numpy()[0] for key, value in predictions.items()})
    arrays.update({f'undone_{key}': value.numpy()[0] for key, value in restored.items()})
    np.savez(path, **arrays)


if __name__ == '__main__':
    tf.keras.utils.set_random_seed(0)  # deeplab2's initialisers, so that a rerun writes the same files
    make_panoptic_fixture(os.path.join(HERE, 'axial_deeplab_s'))
    make_encoder_fixture('axial_resnet_s', 32, os.path.join(HERE, 'axial_resnet_s'))
    make_loss_fixture(os.path.join(HERE, 'panoptic_deeplab_losses.npz'))
    make_targets_fixture(os.path.join(HERE, 'panoptic_deeplab_targets.npz'))
    make_resize_fixture(os.path.join(HERE, 'resize.npz'))
    import make_family_fixtures  # noqa: E402  (it imports helpers from this module)
    tf.keras.utils.set_random_seed(1)
    make_family_fixtures.make_all()
