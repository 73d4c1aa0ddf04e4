"""AutoAugment-style colour policies (Cubuk et al., "AutoAugment", CVPR 2019) built from tf.image-level ops.

A policy is a list of sub-policies, each two (operation, probability, magnitude 0..10) triples; per example one
sub-policy is drawn uniformly and each of its operations fires with its probability. Only photometric operations
are used, so labels never move (deeplab2's classification policies also shear/rotate/translate; ours do not).

Names: 'simple_color_policy', optionally suffixed '_magnitude_scale_<s>' (magnitudes multiplied by s, as in
deeplab2's 'simple_classification_policy_magnitude_scale_0.2').
"""

import re
from typing import Callable, Optional

import tensorflow as tf

_MAX_LEVEL = 10.0

# (operation, probability, magnitude) pairs; magnitudes follow AutoAugment's 0..10 scale.
_SIMPLE_COLOR_POLICY = (
    (('Brightness', 0.6, 5), ('Contrast', 0.4, 4)),
    (('Color', 0.8, 6), ('Solarize', 0.2, 6)),
    (('Posterize', 0.4, 6), ('AutoContrast', 0.6, 0)),
    (('Contrast', 0.6, 7), ('Color', 0.4, 3)),
    (('Brightness', 0.4, 3), ('AutoContrast', 0.4, 0)),
)
POLICIES = {'simple_color_policy': _SIMPLE_COLOR_POLICY}


def _grayscale(image: tf.Tensor) -> tf.Tensor:
    return tf.image.rgb_to_grayscale(image)


def _blend(base: tf.Tensor, image: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """PIL ImageEnhance semantics: factor 0 gives `base`, 1 gives `image`, >1 extrapolates."""
    return tf.clip_by_value(base + factor * (image - base), 0.0, 255.0)


def _enhance_factor(level: float, sign: tf.Tensor) -> tf.Tensor:
    """AutoAugment maps a level to an enhance factor 1 +- 0.9 * level / 10."""
    return 1.0 + sign * 0.9 * level / _MAX_LEVEL


def _apply(name: str, image: tf.Tensor, level: float, sign: tf.Tensor) -> tf.Tensor:
    if name == 'Brightness':
        return _blend(tf.zeros_like(image), image, _enhance_factor(level, sign))
    if name == 'Color':
        return _blend(_grayscale(image), image, _enhance_factor(level, sign))
    if name == 'Contrast':
        return _blend(tf.reduce_mean(_grayscale(image)), image, _enhance_factor(level, sign))
    if name == 'Solarize':
        threshold = 256.0 - 256.0 * level / _MAX_LEVEL
        return tf.where(image >= threshold, 255.0 - image, image)
    if name == 'Posterize':
        shift = int(round(4 * level / _MAX_LEVEL))
        return tf.cast(tf.bitwise.left_shift(tf.bitwise.right_shift(tf.cast(image, tf.uint8), shift), shift),
                       tf.float32)
    if name == 'AutoContrast':
        low = tf.reduce_min(image, axis=[0, 1], keepdims=True)
        high = tf.reduce_max(image, axis=[0, 1], keepdims=True)
        stretched = (image - low) * 255.0 / tf.maximum(high - low, 1e-3)
        return tf.where(high > low, stretched, image)
    raise ValueError(f'Unknown colour operation {name!r}')


def get_policy(name: Optional[str]) -> Optional[Callable[[tf.Tensor, tf.Tensor], tf.Tensor]]:
    """Returns fn(image [H, W, 3] float32 0..255, seed [2]) -> image, or None when `name` is empty.

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
        seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 1 + 2 * 2)
        index = tf.random.stateless_uniform([], seeds[0], 0, len(policy), dtype=tf.int32)

        def make_branch(sub_policy):
            def branch():
                out = image
                for k, (op, prob, magnitude) in enumerate(sub_policy):
                    fire = tf.random.stateless_uniform([], seeds[1 + 2 * k]) < prob
                    sign = tf.where(tf.random.stateless_uniform([], seeds[2 + 2 * k]) < 0.5, -1.0, 1.0)
                    level = min(magnitude * scale, _MAX_LEVEL)
                    out = tf.cond(fire, lambda o=out, op=op, level=level, sign=sign: _apply(op, o, level, sign),
                                  lambda o=out: o)
                return out
            return branch

        return tf.switch_case(index, [make_branch(s) for s in policy])

    return augment
