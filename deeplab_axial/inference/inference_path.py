"""One inference path shared by evaluation, SavedModel export and prediction.

deeplab2's export prepared images differently from its evaluator, and users saw exported models score worse than
eval (deeplab2 issue #110). Here the evaluator, `trainer.export_model` and `deeplab_axial.predict` all call these
functions:

  fit_to_input_size       raw image -> the model's static input size (optional resize-to-range as the eval input
                          pipeline does, a further down-scale only when the image still does not fit, then padding
                          bottom/right with the eval pipeline's 127.5)
  panoptic_predictions    model + softmax + Panoptic-DeepLab post-processing on a batch at the input size, with
                          optional multi-scale / flipped averaging of the raw outputs first (`multi_scale`)
  classification_logits   a classifier's logits on a batch at the input size, optionally averaged the same way
  restore_to_image_size   one example's predictions cropped to the valid region and resized back to the raw size

Post-processing runs at the model's input size (static shapes, XLA-friendly) and the panoptic map is then resized
with nearest neighbour, as deeplab2's `undo_preprocessing` does.
"""

from typing import Callable, Dict, Sequence, Tuple

import tensorflow as tf

from deeplab_axial import common
from deeplab_axial import resize
from deeplab_axial.data import preprocessing
from deeplab_axial.inference import multi_scale

# Integer maps and piecewise-constant per-instance maps are resized with nearest neighbour, the rest bilinearly.
_NEAREST_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY, common.PRED_INSTANCE_KEY,
                 common.PRED_INSTANCE_SCORES_KEY, common.PRED_INSTANCE_CENTER_KEY)
_BILINEAR_KEYS = (common.PRED_SEMANTIC_PROBS_KEY, common.PRED_CENTER_HEATMAP_KEY, common.PRED_OFFSET_MAP_KEY)


def fit_to_input_size(image: tf.Tensor, input_size: Sequence[int], min_resize_value: int = 0,
                      max_resize_value: int = 0, resize_factor: int = 0) -> Tuple[tf.Tensor, tf.Tensor]:
    """Fits one image into the model's static input size.

    Args:
      image: [height, width, 3], any real dtype (values 0..255).
      input_size: (height, width) the model was built for (the eval crop size).
      min_resize_value, max_resize_value, resize_factor: the eval dataset's resize-to-range options (0 = off).

    Returns:
      (padded float32 [input_height, input_width, 3], resized_size int32 [2]): the valid region of the padded image
      is [:resized_size[0], :resized_size[1]].
    """
    height, width = input_size
    image = tf.cast(image, tf.float32)
    image, _ = preprocessing.resize_to_range(image, None, min_resize_value, max_resize_value, resize_factor)
    size = tf.shape(image)[:2]
    scale = tf.minimum(tf.constant(1.0, tf.float64),
                       tf.minimum(height / tf.cast(size[0], tf.float64), width / tf.cast(size[1], tf.float64)))
    fitted = tf.minimum(tf.maximum(tf.cast(tf.floor(tf.cast(size, tf.float64) * scale), tf.int32), 1),
                        tf.constant([height, width]))
    # Corners aligned, as resize_to_range and as restore_to_image_size undoes it.
    image = tf.cond(tf.reduce_all(tf.equal(fitted, size)), lambda: image,
                    lambda: preprocessing.resize_image_and_label(image, None, fitted)[0])
    image, _ = preprocessing.pad_to_size(image, None, height, width, 0)
    return tf.ensure_shape(image, [height, width, 3]), fitted


def panoptic_predictions(model: Callable, post_processor: Callable, images: tf.Tensor, scales: Sequence[float] = (1.0,),
                         flip: bool = False) -> Dict[str, tf.Tensor]:
    """images float32 [batch, h, w, 3] at the model's input size -> post-processed predictions (all keys).

    With scales other than (1.0,) or `flip`, the model also runs on the rescaled / mirrored images and
    post-processing takes the averaged raw outputs (`multi_scale.multi_scale_predict`, deeplab2's eval_scales and
    add_flipped_images).
    """
    if tuple(scales) == (1.0,) and not flip:
        return post_processor(model(images, training=False))
    return post_processor(multi_scale.multi_scale_predict(lambda x: model(x, training=False), images, scales, flip))


def classification_logits(model: Callable, images: tf.Tensor, scales: Sequence[float] = (1.0,),
                          flip: bool = False) -> tf.Tensor:
    """images float32 [batch, h, w, 3] at the model's input size -> logits [batch, classes].

    With scales other than (1.0,) or `flip`, the log of the class probabilities averaged over the rescaled /
    mirrored images (`multi_scale.multi_scale_predict`): it ranks the classes as the averaged probabilities do.
    """
    def logits(x):
        return {common.PRED_LOGITS_KEY: model(x, training=False)[common.PRED_LOGITS_KEY]}
    if tuple(scales) == (1.0,) and not flip:
        return logits(images)[common.PRED_LOGITS_KEY]
    return multi_scale.multi_scale_predict(logits, images, scales, flip)[common.PRED_LOGITS_KEY]


def restore_to_image_size(predictions: Dict[str, tf.Tensor], resized_size: tf.Tensor,
                          image_size: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Crops one example's predictions (no batch dim) to `resized_size` and resizes them to `image_size`.

    As deeplab2's undo_preprocessing, the resize aligns corners (nearest neighbour for ids and scores, bilinear for
    probabilities, heatmap and offsets). Offsets are in pixels, so they are also multiplied by
    (image_size - 1) / (resized_size - 1), the align-corners scale (`resize.offset_scale`). Keys other than the
    panoptic prediction keys pass through unchanged.
    """
    resized_size = tf.cast(resized_size, tf.int32)
    image_size = tf.cast(image_size, tf.int32)
    restored = dict(predictions)
    for key in _NEAREST_KEYS + _BILINEAR_KEYS:
        if key not in predictions:
            continue
        value = predictions[key]
        has_channels = value.shape.rank == 3
        x = value if has_channels else value[..., tf.newaxis]
        x = x[:resized_size[0], :resized_size[1]]
        method = tf.image.ResizeMethod.NEAREST_NEIGHBOR if key in _NEAREST_KEYS else tf.image.ResizeMethod.BILINEAR
        x = resize.resize_align_corners(x, image_size, method)
        if key == common.PRED_OFFSET_MAP_KEY:
            x *= resize.offset_scale(resized_size, image_size)
        x = tf.cast(x, value.dtype)
        restored[key] = x if has_channels else x[..., 0]
    return restored
