"""Per-example augmentation for panoptic training/evaluation and ImageNet classification (deeplab2's recipe).

All random choices use stateless ops driven by a `seed` tensor [2] (one per example, from the reader), so a
pipeline built with a fixed seed produces the same samples on every run. Images are float32 [height, width, 3] in
0..255; panoptic labels int32 [height, width].
"""

from typing import Optional, Sequence, Tuple

import tensorflow as tf

from deeplab_axial.resize import resize_align_corners

# deeplab2 pads images with the mean pixel value, so padding is 0 after the model's x / 127.5 - 1.
PAD_IMAGE_VALUE = 127.5


def _split_seed(seed: tf.Tensor, num: int) -> tf.Tensor:
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num)


def get_random_scale(seed: tf.Tensor, min_scale: float, max_scale: float, step_size: float) -> tf.Tensor:
    """A scale in [min_scale, max_scale]: uniform if step_size is 0, else one of min, min + step, ..., max."""
    if min_scale < 0 or min_scale > max_scale:
        raise ValueError(f'Scale factors need 0 <= min_scale_factor <= max_scale_factor. Received: '
                         f'{min_scale}, {max_scale}')
    if min_scale == max_scale:
        return tf.constant(min_scale, tf.float32)
    if step_size == 0:
        return tf.random.stateless_uniform([], seed, min_scale, max_scale)
    num_steps = int(round((max_scale - min_scale) / step_size)) + 1
    choices = tf.linspace(float(min_scale), float(max_scale), num_steps)
    index = tf.random.stateless_uniform([], seed, 0, num_steps, dtype=tf.int32)
    return choices[index]


def resize_image_and_label(image: tf.Tensor, label: Optional[tf.Tensor], size: tf.Tensor
                          ) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
    """deeplab2's data resizing: bilinear image, nearest-neighbour label, both with align_corners."""
    image = resize_align_corners(image, size)
    if label is not None:
        label = resize_align_corners(label[..., tf.newaxis], size, tf.image.ResizeMethod.NEAREST_NEIGHBOR)[..., 0]
    return image, label


def scale_image_and_label(image: tf.Tensor, label: Optional[tf.Tensor], scale: tf.Tensor
                          ) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
    """Resizes the image and label to floor(size * scale) (deeplab2's randomly_scale_image_and_label)."""
    size = tf.cast(tf.floor(tf.cast(tf.shape(image)[:2], tf.float32) * tf.cast(scale, tf.float32)), tf.int32)
    return resize_image_and_label(image, label, size)


def _scaled_size(size: tf.Tensor, scale: tf.Tensor) -> tf.Tensor:
    """floor(size * scale) in float32 with the scale rounded from float64, as deeplab2 computes it."""
    return tf.cast(tf.floor(tf.cast(size, tf.float32) * tf.cast(scale, tf.float32)), tf.int32)


def resize_to_range_size(height: tf.Tensor, width: tf.Tensor, min_size: int, max_size: int, factor: int
                         ) -> tf.Tensor:
    """deeplab2's resize_to_range target size [2], computed in its two steps.

    First both sides scale so that the shorter reaches `min_size` (floored); then, when a side exceeds `max_size`,
    the result scales down to fit (floored again; never up). With `factor` > 0, `max_size` is first lowered to
    k * factor + 1 and each side then rounds up to that form. Non-positive sizes disable that step.
    """
    new_size = tf.cast(tf.stack([height, width]), tf.int32)
    if min_size > 0:
        new_size = _scaled_size(new_size, min_size / tf.cast(tf.reduce_min(new_size), tf.float64))
    if max_size > 0:
        if factor > 0:
            max_size -= (max_size - 1) % factor
        scale = tf.minimum(tf.cast(max_size / tf.cast(tf.reduce_max(new_size), tf.float64), tf.float32), 1.0)
        new_size = _scaled_size(new_size, scale)
    if factor > 0:
        new_size += (factor - (new_size - 1) % factor) % factor
    return new_size


def resize_to_range(image: tf.Tensor, label: Optional[tf.Tensor], min_size: int, max_size: int, factor: int
                    ) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
    """Resizes image and label to `resize_to_range_size` (as deeplab2, with align_corners); identity when both
    sizes are off."""
    if min_size <= 0 and max_size <= 0:
        return image, label
    shape = tf.shape(image)
    return resize_image_and_label(image, label, resize_to_range_size(shape[0], shape[1], min_size, max_size, factor))


def pad_to_size(image: tf.Tensor, label: Optional[tf.Tensor], height: int, width: int, label_pad_value: int
                ) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
    """Pads bottom/right up to at least [height, width]: image with 127.5, label with `label_pad_value`."""
    shape = tf.shape(image)
    paddings = [[0, tf.maximum(height - shape[0], 0)], [0, tf.maximum(width - shape[1], 0)]]
    image = tf.pad(image, paddings + [[0, 0]], constant_values=PAD_IMAGE_VALUE)
    if label is not None:
        label = tf.pad(label, paddings, constant_values=label_pad_value)
    return image, label


def random_crop(image: tf.Tensor, label: tf.Tensor, height: int, width: int, seed: tf.Tensor
                ) -> Tuple[tf.Tensor, tf.Tensor]:
    """Crops the same random [height, width] window from an image and label at least that large."""
    shape = tf.shape(image)
    seeds = _split_seed(seed, 2)
    y = tf.random.stateless_uniform([], seeds[0], 0, shape[0] - height + 1, dtype=tf.int32)
    x = tf.random.stateless_uniform([], seeds[1], 0, shape[1] - width + 1, dtype=tf.int32)
    image = tf.ensure_shape(image[y:y + height, x:x + width], [height, width, 3])
    label = tf.ensure_shape(label[y:y + height, x:x + width], [height, width])
    return image, label


def random_flip_left_right(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """Flips image and label together with probability 0.5."""
    flip = tf.random.stateless_uniform([], seed) < 0.5
    return (tf.where(flip, tf.reverse(image, [1]), image), tf.where(flip, tf.reverse(label, [1]), label))


def preprocess_panoptic_train(image: tf.Tensor, panoptic: tf.Tensor, seed: tf.Tensor, *,
                              crop_size: Sequence[int], min_scale: float, max_scale: float, scale_step: float,
                              label_pad_value: int, color_augment=None) -> Tuple[tf.Tensor, tf.Tensor]:
    """Random scale -> optional colour policy -> pad to crop -> random crop -> random left-right flip.

    Args:
      image: [height, width, 3] float32 in 0..255.
      panoptic: [height, width] int32.
      seed: [2] int; all randomness derives from it.
      crop_size: (crop_height, crop_width), deeplab2 uses k * output_stride + 1 (e.g. 1025 x 2049).
      label_pad_value: ignore_label * label_divisor (void).
      color_augment: optional fn(image, seed) -> image applied before padding.

    Returns:
      image [crop_h, crop_w, 3] float32, panoptic [crop_h, crop_w] int32.
    """
    seeds = _split_seed(seed, 4)
    scale = get_random_scale(seeds[0], min_scale, max_scale, scale_step)
    image, panoptic = scale_image_and_label(image, panoptic, scale)
    if color_augment is not None:
        image = color_augment(image, seeds[1])
    crop_h, crop_w = crop_size
    image, panoptic = pad_to_size(image, panoptic, crop_h, crop_w, label_pad_value)
    image, panoptic = random_crop(image, panoptic, crop_h, crop_w, seeds[2])
    return random_flip_left_right(image, panoptic, seeds[3])


def preprocess_panoptic_eval(image: tf.Tensor, panoptic: tf.Tensor, crop_size: Optional[Sequence[int]],
                             label_pad_value: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """Evaluation: no crop; pads bottom/right to `crop_size` (which must cover the image) or keeps the image."""
    if crop_size is None:
        return image, panoptic
    crop_h, crop_w = crop_size
    shape = tf.shape(image)
    tf.debugging.assert_less_equal(
        shape[:2], tf.constant([crop_h, crop_w]),
        message=f'Evaluation pads images to crop_size {list(crop_size)} and never crops: an image is larger; use '
                'a crop_size that covers the largest image (e.g. 1025x2049 for Cityscapes, 641x641 for COCO)')
    image, panoptic = pad_to_size(image, panoptic, crop_h, crop_w, label_pad_value)
    return tf.ensure_shape(image, [crop_h, crop_w, 3]), tf.ensure_shape(panoptic, [crop_h, crop_w])


def classification_train(image: tf.Tensor, seed: tf.Tensor, crop_size: Sequence[int]) -> tf.Tensor:
    """Inception-style random-resized crop (area 8%-100%, aspect 3/4-4/3) to `crop_size`, then random flip."""
    seeds = _split_seed(seed, 2)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=seeds[0], min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, crop_size, method='bilinear')
    flip = tf.random.stateless_uniform([], seeds[1]) < 0.5
    image = tf.where(flip, tf.reverse(image, [1]), image)
    return tf.ensure_shape(image, list(crop_size) + [3])


def classification_eval(image: tf.Tensor, crop_size: Sequence[int], crop_fraction: float = 0.875) -> tf.Tensor:
    """Resizes the shorter side to crop / crop_fraction, then takes the centre crop."""
    crop_h, crop_w = crop_size
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    target = tf.cast(max(crop_h, crop_w), tf.float32) / crop_fraction
    scale = target / tf.reduce_min(shape)
    size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), [crop_h, crop_w])
    image = tf.image.resize(image, size, method='bilinear')
    y, x = (size[0] - crop_h) // 2, (size[1] - crop_w) // 2
    return tf.ensure_shape(image[y:y + crop_h, x:x + crop_w], [crop_h, crop_w, 3])
