"""Multi-scale and flipped inference: averages a model's raw outputs over rescaled and mirrored inputs.

As deeplab2's eval_scales and add_flipped_images: each scale s runs the model on the images resized to
(size - 1) * s + 1, rounded down, per side (1025 at 0.5 is 513); its outputs are resized back to the input size and
offsets are rescaled from the scaled image's pixels to the input's, by (size - 1) / (scaled - 1). Both resizes are
bilinear with align_corners, the convention under which that size rule lines the pixel grids up and the one the
models use for their own upsampling. A flipped input's outputs are flipped back and its horizontal offsets negated.
Semantic logits are averaged as probabilities (softmax, then mean); the centre heatmap and offsets are plain means.
Classification logits are averaged as probabilities too. Post-processing then runs once on the averaged outputs.
Sizes are static, so the average also compiles with XLA.
"""

import math
from typing import Callable, Dict, Sequence

import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.resize import resize_align_corners, resize_offsets_align_corners

RawPredictor = Callable[[tf.Tensor], Dict[str, tf.Tensor]]


def scaled_size(size: int, scale: float) -> int:
    """deeplab2's scaled side for a positive scale: floor((size - 1) * scale) + 1."""
    return int(math.floor((size - 1) * scale)) + 1


def resize_back(outputs: Dict[str, tf.Tensor], height: int, width: int) -> Dict[str, tf.Tensor]:
    """Raw outputs at another static size -> [height, width] (bilinear, align_corners), offsets in the new pixels."""
    resized = {}
    if common.PRED_SEMANTIC_LOGITS_KEY in outputs:
        resized[common.PRED_SEMANTIC_LOGITS_KEY] = resize_align_corners(outputs[common.PRED_SEMANTIC_LOGITS_KEY],
                                                                        [height, width])
    if common.PRED_CENTER_HEATMAP_KEY in outputs:
        resized[common.PRED_CENTER_HEATMAP_KEY] = resize_align_corners(
            outputs[common.PRED_CENTER_HEATMAP_KEY][..., None], [height, width])[..., 0]
    if common.PRED_OFFSET_MAP_KEY in outputs:
        resized[common.PRED_OFFSET_MAP_KEY] = resize_offsets_align_corners(outputs[common.PRED_OFFSET_MAP_KEY],
                                                                           [height, width])
    if common.PRED_LOGITS_KEY in outputs:
        resized[common.PRED_LOGITS_KEY] = outputs[common.PRED_LOGITS_KEY]
    return resized


def _unflip(outputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Undoes a horizontal flip of the input: mirror the maps back and negate dx."""
    unflipped = dict(outputs)
    for key in (common.PRED_SEMANTIC_LOGITS_KEY, common.PRED_CENTER_HEATMAP_KEY, common.PRED_OFFSET_MAP_KEY):
        if key in outputs:
            unflipped[key] = tf.reverse(outputs[key], axis=[2])  # The width axis of [B, H, W] and [B, H, W, C].
    if common.PRED_OFFSET_MAP_KEY in outputs:
        unflipped[common.PRED_OFFSET_MAP_KEY] = unflipped[common.PRED_OFFSET_MAP_KEY] * tf.constant([1.0, -1.0])
    return unflipped


def multi_scale_predict(predict_raw: RawPredictor, images: tf.Tensor, scales: Sequence[float] = (1.0,),
                        flip: bool = False) -> Dict[str, tf.Tensor]:
    """Averages raw outputs over scales (and flips).

    Args:
      predict_raw: the model: float32 [batch, height, width, 3] images in 0..255 -> raw outputs at that size
        (`semantic_logits`, `center_heatmap`, `offset_map` and/or classification `logits`; other keys are dropped).
      images: float32 [batch, height, width, 3] in 0..255.
      scales: positive input scales.
      flip: also run every scale on the horizontally mirrored images.

    Returns:
      Averaged outputs at the input size: `semantic_probs` with `semantic_logits` = log(semantic_probs) (so a
      post-processor reading either agrees), `center_heatmap`, `offset_map`, and classification `logits` =
      log(mean probability).
    """
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f'`scales` must be non-empty and positive. Received: {tuple(scales)}')
    height, width = int(images.shape[1]), int(images.shape[2])
    runs = []
    for scale in scales:
        size = [scaled_size(height, scale), scaled_size(width, scale)]
        scaled = images if size == [height, width] else resize_align_corners(images, size)
        runs.append(resize_back(predict_raw(scaled), height, width))
        if flip:
            runs.append(resize_back(_unflip(predict_raw(tf.reverse(scaled, axis=[2]))), height, width))
    averaged = {}
    if common.PRED_SEMANTIC_LOGITS_KEY in runs[0]:
        probs = tf.add_n([tf.nn.softmax(r[common.PRED_SEMANTIC_LOGITS_KEY]) for r in runs]) / len(runs)
        averaged[common.PRED_SEMANTIC_PROBS_KEY] = probs
        averaged[common.PRED_SEMANTIC_LOGITS_KEY] = tf.math.log(tf.maximum(probs, 1e-30))
    for key in (common.PRED_CENTER_HEATMAP_KEY, common.PRED_OFFSET_MAP_KEY):
        if key in runs[0]:
            averaged[key] = tf.add_n([r[key] for r in runs]) / len(runs)
    if common.PRED_LOGITS_KEY in runs[0]:
        probs = tf.add_n([tf.nn.softmax(r[common.PRED_LOGITS_KEY]) for r in runs]) / len(runs)
        averaged[common.PRED_LOGITS_KEY] = tf.math.log(tf.maximum(probs, 1e-30))
    return averaged
