"""deeplab2's AutoAugment colour policies (Cubuk et al., "AutoAugment", CVPR 2019), with deeplab2's semantics.

deeplab2's Axial-DeepLab recipes train with
`autoaugment_policy_name: "simple_classification_policy_magnitude_scale_0.2"`. A policy is a list of sub-policies of
two (operation, probability, magnitude 0..10) triples; per image one sub-policy is drawn uniformly and each of its
operations fires with its probability. The operations are photometric, so labels never move.

The operations keep the semantics of deeplab2's port of TensorFlow's AutoAugment, so that its recipes train on the
same images:
- the image is truncated to uint8 first and the operations work on uint8 values;
- Brightness, Color, Contrast and Sharpness blend the image with a degenerate one (black; greyscale; a constant;
  3x3-smoothed inside a kept one-pixel border) by factor level / 10 * 1.8 + 0.1, truncating to uint8 (clipping to
  0..255 first when the factor is above 1);
- Contrast's constant is the pixel count / 256, clipped to 255: the port sums the histogram where PIL takes the mean
  grey level, and deeplab2 inherits that;
- Solarize keeps the values below int(level / 10 * 256) and inverts the others;
- Equalize is PIL's per-channel histogram equalisation.

Names: 'simple_classification_policy', optionally suffixed '_magnitude_scale_<s>' (magnitudes multiplied by s).
"""

import functools
import re
from typing import Callable, Optional

import tensorflow as tf

_MAX_LEVEL = 10.0

# deeplab2's `simple_classification_policy` (its autoaugment_policy.py encodes it as indices into the reduced
# search space and probability grid); (operation, probability, magnitude).
_SIMPLE_CLASSIFICATION_POLICY = (
    (('Sharpness', 0.4, 7), ('Brightness', 0.2, 10)),
    (('Equalize', 0.0, 9), ('Contrast', 0.2, 10)),
    (('Sharpness', 0.2, 9), ('Color', 0.2, 9)),
    (('Solarize', 0.2, 7), ('Equalize', 0.6, 9)),
    (('Sharpness', 0.2, 1), ('Equalize', 0.2, 7)),
)
POLICIES = {'simple_classification_policy': _SIMPLE_CLASSIFICATION_POLICY}


def _blend(degenerate: tf.Tensor, image: tf.Tensor, factor: float) -> tf.Tensor:
    """uint8 blend: factor 0 gives `degenerate`, 1 gives `image`, above 1 extrapolates (clipped)."""
    if factor == 0.0:
        return degenerate
    if factor == 1.0:
        return image
    low = tf.cast(degenerate, tf.float32)
    blended = low + factor * (tf.cast(image, tf.float32) - low)
    if factor > 1.0:
        blended = tf.clip_by_value(blended, 0.0, 255.0)
    return tf.cast(blended, tf.uint8)


def _enhance_factor(level: float) -> float:
    return level / _MAX_LEVEL * 1.8 + 0.1


def _smoothed(image: tf.Tensor) -> tf.Tensor:
    """3x3 smoothing (centre weight 5, others 1, over 13) inside the one-pixel border, which stays as it is."""
    kernel = tf.tile(tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]])[:, :, None, None] / 13.0,
                     [1, 1, 3, 1])
    inner = tf.nn.depthwise_conv2d(tf.cast(image, tf.float32)[None], kernel, [1, 1, 1, 1], 'VALID')[0]
    inner = tf.cast(tf.clip_by_value(inner, 0.0, 255.0), tf.uint8)
    border = tf.pad(tf.ones_like(inner, tf.bool), [[1, 1], [1, 1], [0, 0]])
    return tf.where(border, tf.pad(inner, [[1, 1], [1, 1], [0, 0]]), image)


def _equalize_channel(channel: tf.Tensor) -> tf.Tensor:
    """PIL's equalisation of one uint8 channel: a cumulative-histogram lookup table (identity when flat)."""
    values = tf.cast(channel, tf.int32)
    histogram = tf.math.bincount(tf.reshape(values, [-1]), minlength=256, maxlength=256)
    nonzero = tf.gather(histogram, tf.reshape(tf.where(histogram > 0), [-1]))
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    table = tf.concat([[0], (tf.cumsum(histogram) + safe_step // 2)[:-1] // safe_step], 0)
    equalized = tf.gather(tf.clip_by_value(table, 0, 255), values)
    return tf.cast(tf.where(step > 0, equalized, values), tf.uint8)


def apply_operation(name: str, image: tf.Tensor, level: float) -> tf.Tensor:
    """One operation on a uint8 [height, width, 3] image at magnitude `level` (0..10)."""
    if name == 'Brightness':
        return _blend(tf.zeros_like(image), image, _enhance_factor(level))
    if name == 'Color':
        return _blend(tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image)), image, _enhance_factor(level))
    if name == 'Contrast':
        count = tf.cast(tf.shape(image)[0] * tf.shape(image)[1], tf.float32)
        constant = tf.cast(tf.minimum(count / 256.0, 255.0), tf.uint8)
        return _blend(tf.fill(tf.shape(image), constant), image, _enhance_factor(level))
    if name == 'Sharpness':
        return _blend(_smoothed(image), image, _enhance_factor(level))
    if name == 'Solarize':
        threshold = int(level / _MAX_LEVEL * 256)
        values = tf.cast(image, tf.int32)
        return tf.cast(tf.where(values < threshold, values, 255 - values), tf.uint8)
    if name == 'Equalize':
        return tf.stack([_equalize_channel(image[:, :, c]) for c in range(3)], axis=2)
    raise ValueError(f'Unknown AutoAugment operation {name!r}')


def get_policy(name: Optional[str]) -> Optional[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]]:
    """Returns fn(image [H, W, 3] float32 0..255, seed [2]) -> image (float32, integer values), or None when `name`
    is empty.

    Raises:
      ValueError: naming the policy and listing the valid names.
    """
    if not name:
        return None
    match = re.fullmatch(r'(.+?)(?:_magnitude_scale_([0-9.]+))?', name)
    base, scale = match.group(1), float(match.group(2) or 1.0)
    if base not in POLICIES:
        raise ValueError(f'Unknown autoaugment_policy_name {name!r}; expected one of {sorted(POLICIES)}, optionally '
                         'with "_magnitude_scale_<s>"')
    policy = POLICIES[base]

    def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
        index = tf.random.stateless_uniform([], seeds[0], 0, len(policy), dtype=tf.int32)
        fires = tf.random.stateless_uniform([2], seeds[1])
        pixels = tf.cast(image, tf.uint8)

        def make_branch(sub_policy):
            def branch():
                out = pixels
                for k, (op, probability, magnitude) in enumerate(sub_policy):
                    # A cond, not a select: an operation that does not fire is not computed on the (scaled) image.
                    operation = functools.partial(apply_operation, op, out, magnitude * scale)
                    out = tf.cond(fires[k] < probability, operation, functools.partial(tf.identity, out))
                return out
            return branch

        augmented = tf.switch_case(index, [make_branch(sub_policy) for sub_policy in policy])
        return tf.cast(augmented, tf.float32)

    return augment
