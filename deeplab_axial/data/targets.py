"""Panoptic-DeepLab training targets from a panoptic label map, in pure TensorFlow.

Reference: Cheng et al., "Panoptic-DeepLab", CVPR 2020, §3.2 (center heatmap as 2-D Gaussians, pixel-to-center
offsets) and deeplab2 `data/sample_generator.py` (the values kept here: sigma 8, window 6*sigma+3, small-instance
weight 3 below 4096 pixels).

Semantics chosen (the same as deeplab2 unless stated):
- Label encoding: panoptic = semantic * label_divisor + instance. Void pixels have semantic == ignore_label. A pixel of
  a thing class with instance 0 is that class's crowd region. Only thing-class segments with instance != 0 are
  instances; a stuff pixel never gets a center, whatever its instance id (deeplab2 does not look at the class).
- Instance center = the mean (y, x) of the instance's pixels inside the given map (so an instance cut by the crop
  border is centred on its visible part), rounded half to even (`tf.round`, as deeplab2).
- Center heatmap: exp(-((y - cy)^2 + (x - cx)^2) / (2 sigma^2)) inside a square window of radius
  ceil(3 sigma) + 1 around each center (51 x 51 for sigma 8, deeplab2's 6 sigma + 3), 0 outside it; overlapping
  Gaussians take the max. Built by scattering one window per instance onto a padded canvas, so memory and time grow
  with the number of instances times the window, not with instances times the image.
- Offsets (dy, dx) = center - pixel on instance pixels, 0 elsewhere.
- semantic_loss_weight is 1 everywhere, `small_instance_weight` on pixels of instances with area
  < `small_instance_threshold`. Void pixels keep weight 1: the semantic loss drops them through the ignore label,
  as deeplab2. Crowd pixels keep weight 1 (they carry a valid semantic class).
- center_loss_weight is 0 on void and crowd pixels, 1 elsewhere; regression_loss_weight is 1 on instance pixels only.
- panoptic_gt is the input map unchanged (crowd keeps `class * divisor`; deeplab2 rewrites crowd to void here, our
  convention keeps the crowd information in the label itself). is_crowd_gt is bool.
- Deterministic: `tf.unique` numbers segments by first appearance, sums are integer, and the heatmap scatter is a max.
"""

import math
from typing import Dict, Sequence

import tensorflow as tf

from deeplab_axial import common


def _class_lookup(semantic: tf.Tensor, classes: Sequence[int]) -> tf.Tensor:
    """Whether each semantic label is one of `classes`, through a table lookup (no per-class full-image pass)."""
    if not classes:
        return tf.zeros_like(semantic, dtype=tf.bool)
    size = max(classes) + 1
    table = tf.scatter_nd([[c] for c in classes], tf.ones([len(classes)], tf.bool), [size])
    in_range = (semantic >= 0) & (semantic < size)
    return in_range & tf.gather(table, tf.clip_by_value(semantic, 0, size - 1))


def gaussian_radius(sigma: float) -> int:
    """Half-size of the square window the center Gaussian is drawn in (25 for sigma 8)."""
    return int(math.ceil(3.0 * sigma)) + 1


def _center_heatmap(centers: tf.Tensor, height: tf.Tensor, width: tf.Tensor, sigma: float) -> tf.Tensor:
    """Max over instances of truncated 2-D Gaussians at integer `centers` [num_instances, 2] (y, x)."""
    radius = gaussian_radius(sigma)
    steps = tf.range(-radius, radius + 1, dtype=tf.int32)
    dy, dx = tf.meshgrid(steps, steps, indexing='ij')
    gaussian = tf.exp(-tf.cast(dy * dy + dx * dx, tf.float32) / (2.0 * sigma * sigma))
    # Canvas padded by `radius` on every side: window pixel (i, j) of center (cy, cx) lands at (cy + i, cx + j).
    window = tf.stack([dy + radius, dx + radius], axis=-1)  # [2 * radius + 1, 2 * radius + 1, 2]
    indices = centers[:, tf.newaxis, tf.newaxis, :] + window[tf.newaxis]
    num_instances = tf.shape(centers)[0]
    canvas = tf.zeros([height + 2 * radius, width + 2 * radius], tf.float32)
    canvas = tf.tensor_scatter_nd_max(canvas, tf.reshape(indices, [-1, 2]),
                                      tf.tile(tf.reshape(gaussian, [-1]), [num_instances]))
    return canvas[radius:radius + height, radius:radius + width]


def generate_panoptic_targets(panoptic: tf.Tensor,
                              *,
                              label_divisor: int,
                              ignore_label: int,
                              thing_classes: Sequence[int],
                              sigma: float = 8.0,
                              small_instance_threshold: int = 4096,
                              small_instance_weight: float = 3.0,
                              increase_small_instance_weights: bool = True) -> Dict[str, tf.Tensor]:
    """Builds the Panoptic-DeepLab targets of one panoptic label map.

    Works eagerly and inside tf.data / tf.function (the number of instances is dynamic). See the module docstring
    for the semantics.

    Args:
      panoptic: int [height, width] (or [height, width, 1]) panoptic label map.
      label_divisor: panoptic = semantic * label_divisor + instance.
      ignore_label: semantic label of void pixels.
      thing_classes: semantic labels of the classes that have instances.
      sigma: standard deviation of the center Gaussians, in pixels.
      small_instance_threshold: instances with fewer pixels than this are small.
      small_instance_weight: semantic loss weight of small-instance pixels.
      increase_small_instance_weights: whether to apply `small_instance_weight` at all.

    Returns:
      A dict keyed by common.GT_* / *_LOSS_WEIGHT_KEY: `semantic_gt`, `panoptic_gt` [height, width] int32,
      `instance_center_gt` [height, width] float32, `instance_regression_gt` [height, width, 2] float32 (dy, dx),
      `semantic_loss_weight`, `center_loss_weight`, `regression_loss_weight` [height, width] float32 and
      `is_crowd_gt` [height, width] bool.

    Raises:
      ValueError: on a non-positive `label_divisor` or `sigma`, or a label map that is not [height, width(, 1)].
    """
    if label_divisor <= 0:
        raise ValueError(f'generate_panoptic_targets: `label_divisor` must be positive. Received: {label_divisor}')
    if sigma <= 0:
        raise ValueError(f'generate_panoptic_targets: `sigma` must be positive. Received: {sigma}')
    panoptic = tf.cast(tf.convert_to_tensor(panoptic), tf.int32)
    if panoptic.shape.rank == 3 and panoptic.shape[-1] == 1:
        panoptic = panoptic[..., 0]
    if panoptic.shape.rank != 2:
        raise ValueError('generate_panoptic_targets: `panoptic` must be [height, width] or [height, width, 1]. '
                         f'Received shape: {panoptic.shape}')
    height, width = tf.shape(panoptic)[0], tf.shape(panoptic)[1]
    thing_classes = tuple(int(c) for c in thing_classes)

    semantic = panoptic // label_divisor
    is_thing = _class_lookup(semantic, thing_classes)
    has_instance_id = panoptic % label_divisor != 0
    is_instance = is_thing & has_instance_id
    is_crowd = is_thing & ~has_instance_id
    is_void = tf.equal(semantic, ignore_label)

    # One segment per distinct panoptic id: areas and coordinate sums with integer segment sums (exact at any size).
    segment_ids, segment_of_pixel = tf.unique(tf.reshape(panoptic, [-1]))
    num_segments = tf.size(segment_ids)
    pixel_index = tf.range(height * width, dtype=tf.int32)
    coords = tf.cast(tf.stack([pixel_index // width, pixel_index % width], axis=-1), tf.int64)
    area = tf.math.unsorted_segment_sum(tf.ones_like(pixel_index, tf.int64), segment_of_pixel, num_segments)
    coord_sum = tf.math.unsorted_segment_sum(coords, segment_of_pixel, num_segments)
    mean = tf.cast(coord_sum, tf.float64) / tf.cast(area, tf.float64)[:, tf.newaxis]
    segment_center = tf.cast(tf.round(mean), tf.int32)  # [num_segments, 2] (y, x)
    segment_is_instance = (_class_lookup(segment_ids // label_divisor, thing_classes)
                           & tf.not_equal(segment_ids % label_divisor, 0))

    pixel_center = tf.reshape(tf.gather(segment_center, segment_of_pixel), [height, width, 2])
    pixel_coords = tf.reshape(tf.cast(coords, tf.int32), [height, width, 2])
    regression = tf.where(is_instance[..., tf.newaxis], tf.cast(pixel_center - pixel_coords, tf.float32), 0.0)

    semantic_weight = tf.ones([height, width], tf.float32)
    if increase_small_instance_weights:
        is_small = tf.reshape(tf.gather(area < small_instance_threshold, segment_of_pixel), [height, width])
        semantic_weight = tf.where(is_instance & is_small, tf.constant(small_instance_weight, tf.float32),
                                   semantic_weight)

    centers = tf.boolean_mask(segment_center, segment_is_instance)
    heatmap = _center_heatmap(centers, height, width, float(sigma))

    return {
        common.GT_SEMANTIC_KEY: semantic,
        common.GT_PANOPTIC_KEY: panoptic,
        common.GT_INSTANCE_CENTER_KEY: heatmap,
        common.GT_INSTANCE_REGRESSION_KEY: regression,
        common.SEMANTIC_LOSS_WEIGHT_KEY: semantic_weight,
        common.CENTER_LOSS_WEIGHT_KEY: tf.cast(~(is_void | is_crowd), tf.float32),
        common.REGRESSION_LOSS_WEIGHT_KEY: tf.cast(is_instance, tf.float32),
        common.GT_IS_CROWD: is_crowd,
    }


def generate_panoptic_targets_batch(panoptic: tf.Tensor, **kwargs) -> Dict[str, tf.Tensor]:
    """`generate_panoptic_targets` over a batch [batch, height, width]; keyword arguments are passed through."""
    panoptic = tf.cast(tf.convert_to_tensor(panoptic), tf.int32)
    signature = {
        common.GT_SEMANTIC_KEY: tf.TensorSpec(None, tf.int32),
        common.GT_PANOPTIC_KEY: tf.TensorSpec(None, tf.int32),
        common.GT_INSTANCE_CENTER_KEY: tf.TensorSpec(None, tf.float32),
        common.GT_INSTANCE_REGRESSION_KEY: tf.TensorSpec(None, tf.float32),
        common.SEMANTIC_LOSS_WEIGHT_KEY: tf.TensorSpec(None, tf.float32),
        common.CENTER_LOSS_WEIGHT_KEY: tf.TensorSpec(None, tf.float32),
        common.REGRESSION_LOSS_WEIGHT_KEY: tf.TensorSpec(None, tf.float32),
        common.GT_IS_CROWD: tf.TensorSpec(None, tf.bool),
    }
    return tf.map_fn(lambda p: generate_panoptic_targets(p, **kwargs), panoptic, fn_output_signature=signature)
