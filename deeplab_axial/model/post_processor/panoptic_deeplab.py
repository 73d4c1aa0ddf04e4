"""Panoptic-DeepLab post-processing in pure TensorFlow: center NMS, offset grouping and the panoptic merge.

Reference: Cheng et al., "Panoptic-DeepLab", CVPR 2020, §3.3. deeplab2 merges with a custom C++ op whose pure-TF
fallback disagrees with it on edge cases; this is one batched implementation with static output shapes, so it runs
under tf.function(jit_compile=True), inside an exported SavedModel and on TPU. Semantics chosen:

- Semantic prediction: argmax of the class probabilities (lowest class on exact ties, as tf.argmax on CPU).
- Centers: heatmap values <= `center_threshold` are zeroed, a pixel is a center candidate when it is > the threshold
  and equal to the max over its `nms_kernel` x `nms_kernel` window (SAME padding; equal neighbours on a plateau both
  survive, as deeplab2), then the `keep_k_centers` highest are kept (ties: lower row-major index first). The output
  is padded to `keep_k_centers` with invalid entries.
- Grouping: each thing pixel (semantic argmax in `thing_classes`) moves by its predicted offset (dy, dx) and joins
  the nearest valid center (squared Euclidean distance; ties go to the higher-scoring center). Instance ids are the
  center's rank + 1, so they lie in 1..keep_k_centers and must stay below `label_divisor`. Thing pixels when there
  is no center become void.
- Instance class: majority vote of the semantic argmax over the instance's pixels (ties: lowest class id); every pixel
  of the instance takes that class.
- Stuff: one segment per stuff class per image; a segment with area < `stuff_area_limit` becomes void (a segment of
  exactly `stuff_area_limit` pixels is kept, as deeplab2's TF fallback and the original Panoptic-DeepLab; deeplab2's
  C++ op drops it).
- Pixels predicted as `ignore_label` (a class in COCO-style datasets) are void: panoptic `ignore_label * divisor`,
  instance 0.
- Instance score (for instance AP): center heatmap value at the instance's center x the mean probability of the
  instance's class over its pixels. `instance_scores` carries it on every pixel of the instance, 0 elsewhere.
- `instance_center_pred`: the heatmap value at the kept centers, 0 elsewhere.
"""

from typing import Any, Dict, Sequence, Tuple

import tensorflow as tf

from deeplab_axial import common


def _class_table(classes: Sequence[int], num_classes: int) -> tf.Tensor:
    """bool [num_classes]: True for the listed classes."""
    return tf.constant([c in set(classes) for c in range(num_classes)], tf.bool)


def _static_or_dynamic_shape(x: tf.Tensor) -> list:
    dynamic = tf.shape(x)
    return [dim if dim is not None else dynamic[i] for i, dim in enumerate(x.shape.as_list())]


def _max_pool_2d(x: tf.Tensor, kernel: int) -> tf.Tensor:
    """Max over a kernel x kernel window with SAME padding, as two 1-D passes ([b, h, w] -> [b, h, w])."""
    x = x[..., tf.newaxis]
    x = tf.nn.max_pool2d(x, ksize=[1, kernel], strides=1, padding='SAME')
    x = tf.nn.max_pool2d(x, ksize=[kernel, 1], strides=1, padding='SAME')
    return x[..., 0]


def find_instance_centers(center_heatmap: tf.Tensor, *, center_threshold: float, nms_kernel: int,
                          keep_k_centers: int) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Thresholds and max-pool-NMS's the heatmap and keeps the top-k centers.

    Args:
      center_heatmap: [batch, height, width] float.
      center_threshold: centers need a heatmap value > this.
      nms_kernel: side of the NMS window.
      keep_k_centers: how many centers to keep (static output size).

    Returns:
      centers int32 [batch, k, 2] as (y, x), scores float32 [batch, k] and valid bool [batch, k]; the valid entries
      come first, sorted by score.
    """
    heatmap = tf.cast(center_heatmap, tf.float32)
    heatmap = tf.where(heatmap > center_threshold, heatmap, 0.0)
    is_peak = tf.equal(heatmap, _max_pool_2d(heatmap, nms_kernel)) & (heatmap > 0.0)
    peaks = tf.where(is_peak, heatmap, 0.0)
    batch, height, width = _static_or_dynamic_shape(peaks)
    num_pixels = height * width
    # Images with fewer pixels than k: take them all and pad with invalid entries (score 0) up to k.
    k = min(keep_k_centers, num_pixels) if isinstance(num_pixels, int) else tf.minimum(keep_k_centers, num_pixels)
    scores, index = tf.math.top_k(tf.reshape(peaks, [batch, num_pixels]), k, sorted=True)
    if not isinstance(k, int) or k < keep_k_centers:
        padding = [[0, 0], [0, keep_k_centers - k]]
        scores = tf.ensure_shape(tf.pad(scores, padding), [peaks.shape[0], keep_k_centers])
        index = tf.ensure_shape(tf.pad(index, padding), [peaks.shape[0], keep_k_centers])
    centers = tf.stack([index // width, index % width], axis=-1)
    return centers, scores, scores > 0.0


def group_pixels(centers: tf.Tensor, valid: tf.Tensor, offset_map: tf.Tensor, chunk_size: int = 16) -> tf.Tensor:
    """Index 1..k of the nearest valid center of every pixel moved by its offset, 0 when there is no valid center.

    Loops over the centers `chunk_size` at a time (only as far as the largest valid count in the batch), keeping a
    running minimum: memory stays at a few [batch, height, width, chunk_size] maps whatever k is, and each pass reads
    the offset map once for a whole chunk. Equal distances go to the lower index, i.e. the higher-scoring center.

    Args:
      centers: int32 [batch, k, 2] (y, x).
      valid: bool [batch, k], valid entries first.
      offset_map: [batch, height, width, 2] (dy, dx).
      chunk_size: centers compared per loop step.

    Returns:
      int32 [batch, height, width].
    """
    offset_map = tf.cast(offset_map, tf.float32)
    batch, height, width, _ = _static_or_dynamic_shape(offset_map)
    num_centers = centers.shape[1]
    num_chunks = -(-num_centers // chunk_size)
    padding = [[0, 0], [0, num_chunks * chunk_size - num_centers]]
    centers = tf.cast(centers, tf.float32)
    chunk_y = tf.reshape(tf.pad(centers[..., 0], padding), [batch, num_chunks, 1, 1, chunk_size])
    chunk_x = tf.reshape(tf.pad(centers[..., 1], padding), [batch, num_chunks, 1, 1, chunk_size])
    chunk_valid = tf.reshape(tf.pad(valid, padding), [batch, num_chunks, 1, 1, chunk_size])
    grid_y = tf.cast(tf.range(height), tf.float32)[tf.newaxis, :, tf.newaxis, tf.newaxis]
    grid_x = tf.cast(tf.range(width), tf.float32)[tf.newaxis, tf.newaxis, :, tf.newaxis]
    target_y = grid_y + offset_map[..., 0:1]
    target_x = grid_x + offset_map[..., 1:2]
    num_valid = tf.reduce_max(tf.reduce_sum(tf.cast(valid, tf.int32), axis=1))

    def body(c, best_distance, best_index):
        distance = tf.square(target_y - chunk_y[:, c]) + tf.square(target_x - chunk_x[:, c])
        distance = tf.where(chunk_valid[:, c], distance, float('inf'))
        chunk_best = tf.reduce_min(distance, axis=-1)
        chunk_index = tf.argmin(distance, axis=-1, output_type=tf.int32) + c * chunk_size + 1
        closer = chunk_best < best_distance
        return c + 1, tf.where(closer, chunk_best, best_distance), tf.where(closer, chunk_index, best_index)

    shape = tf.shape(target_y)[:3]
    init = (tf.constant(0), tf.fill(shape, float('inf')), tf.zeros(shape, tf.int32))
    _, _, best_index = tf.while_loop(lambda c, *_: c * chunk_size < num_valid, body, init,
                                     maximum_iterations=num_chunks)
    return best_index


def _per_segment_sum(values: tf.Tensor, segment: tf.Tensor, num_segments: int, batch: Any) -> tf.Tensor:
    """Sums values [batch, h, w] by segment id in [0, num_segments) per image -> [batch, num_segments]."""
    offsets = tf.range(batch)[:, tf.newaxis, tf.newaxis] * num_segments
    total = tf.math.unsorted_segment_sum(tf.reshape(values, [-1]), tf.reshape(segment + offsets, [-1]),
                                         batch * num_segments)
    return tf.reshape(total, [batch, num_segments])


def panoptic_deeplab_post_process(semantic_probs: tf.Tensor,
                                  center_heatmap: tf.Tensor,
                                  offset_map: tf.Tensor,
                                  *,
                                  label_divisor: int,
                                  ignore_label: int,
                                  thing_classes: Sequence[int],
                                  center_threshold: float = 0.1,
                                  nms_kernel: int = 7,
                                  keep_k_centers: int = 200,
                                  stuff_area_limit: int = 0) -> Dict[str, tf.Tensor]:
    """Merges semantic probabilities, center heatmap and offsets into panoptic predictions (module docstring).

    Args:
      semantic_probs: [batch, height, width, num_classes] class probabilities.
      center_heatmap: [batch, height, width].
      offset_map: [batch, height, width, 2] (dy, dx) in pixels.
      label_divisor: panoptic = class * label_divisor + instance id.
      ignore_label: class of void pixels.
      thing_classes: the classes that have instances.
      center_threshold, nms_kernel, keep_k_centers: center selection (see `find_instance_centers`).
      stuff_area_limit: stuff segments with fewer pixels become void.

    Returns:
      A dict keyed by common.PRED_*: panoptic, semantic and instance maps int32 [batch, height, width],
      instance_scores and instance_center_pred float32 [batch, height, width], and the three inputs passed through.
    """
    semantic_probs = tf.cast(semantic_probs, tf.float32)
    center_heatmap = tf.cast(center_heatmap, tf.float32)
    offset_map = tf.cast(offset_map, tf.float32)
    batch, height, width, num_classes = _static_or_dynamic_shape(semantic_probs)
    if not isinstance(num_classes, int):
        raise ValueError('panoptic_deeplab_post_process: the class dimension of `semantic_probs` must be static.')
    num_instances = keep_k_centers + 1  # segment 0 = no instance

    semantic = tf.argmax(semantic_probs, axis=-1, output_type=tf.int32)
    is_thing = tf.gather(_class_table(thing_classes, num_classes), semantic)

    centers, center_scores, valid = find_instance_centers(
        center_heatmap, center_threshold=center_threshold, nms_kernel=nms_kernel, keep_k_centers=keep_k_centers)
    instance = tf.where(is_thing, group_pixels(centers, valid, offset_map), 0)

    # Majority vote: class histogram per instance, ties broken towards the lowest class id.
    votes = _per_segment_sum(tf.ones_like(semantic), instance * num_classes + semantic,
                             num_instances * num_classes, batch)
    votes = tf.reshape(votes, [batch, num_instances, num_classes])
    tie_break = tf.range(num_classes - 1, -1, -1, dtype=tf.int32)
    instance_class = tf.argmax(votes * num_classes + tie_break, axis=-1, output_type=tf.int32)
    pixel_class = tf.where(instance > 0, tf.gather(instance_class, instance, batch_dims=1), semantic)

    is_stuff = tf.gather(_class_table([c for c in range(num_classes) if c not in set(thing_classes)
                                       and c != ignore_label], num_classes), semantic)
    stuff_area = _per_segment_sum(tf.cast(is_stuff, tf.int32), semantic, num_classes, batch)
    small_stuff = is_stuff & tf.gather(stuff_area < stuff_area_limit, semantic, batch_dims=1)
    is_void = tf.equal(semantic, ignore_label) | small_stuff | (is_thing & tf.equal(instance, 0))

    panoptic = tf.where(is_void, ignore_label * label_divisor, pixel_class * label_divisor + instance)
    instance = tf.where(is_void, 0, instance)

    # Score = center value x mean probability of the instance's class over its pixels.
    class_prob = tf.gather(semantic_probs, pixel_class, batch_dims=3)
    prob_sum = _per_segment_sum(class_prob, instance, num_instances, batch)
    area = _per_segment_sum(tf.ones_like(class_prob), instance, num_instances, batch)
    padded_center_scores = tf.pad(center_scores, [[0, 0], [1, 0]])
    instance_score = padded_center_scores * tf.math.divide_no_nan(prob_sum, area)
    instance_score = tf.where(tf.range(num_instances)[tf.newaxis] > 0, instance_score, 0.0)
    pixel_score = tf.gather(instance_score, instance, batch_dims=1)

    flat_index = tf.range(batch)[:, tf.newaxis] * (height * width) + centers[..., 0] * width + centers[..., 1]
    center_pred = tf.scatter_nd(tf.reshape(flat_index, [-1, 1]), tf.reshape(center_scores, [-1]),
                                [batch * height * width])

    return {
        common.PRED_PANOPTIC_KEY: panoptic,
        common.PRED_SEMANTIC_KEY: semantic,
        common.PRED_INSTANCE_KEY: instance,
        common.PRED_INSTANCE_SCORES_KEY: pixel_score,
        common.PRED_INSTANCE_CENTER_KEY: tf.reshape(center_pred, [batch, height, width]),
        common.PRED_SEMANTIC_PROBS_KEY: semantic_probs,
        common.PRED_CENTER_HEATMAP_KEY: center_heatmap,
        common.PRED_OFFSET_MAP_KEY: offset_map,
    }


def semantic_probabilities(outputs: Dict[str, tf.Tensor]) -> tf.Tensor:
    """float32 class probabilities from raw outputs: `semantic_probs` if present, else softmax of the logits."""
    if common.PRED_SEMANTIC_PROBS_KEY in outputs:
        return tf.cast(outputs[common.PRED_SEMANTIC_PROBS_KEY], tf.float32)
    return tf.nn.softmax(tf.cast(outputs[common.PRED_SEMANTIC_LOGITS_KEY], tf.float32), axis=-1)


class PostProcessor:
    """Panoptic-DeepLab post-processing with the dataset's label encoding bound in.

    Args:
      num_classes: number of semantic classes the model predicts.
      label_divisor: panoptic = class * label_divisor + instance id.
      ignore_label: class of void pixels.
      thing_classes: the classes that have instances.
      center_threshold: minimum center heatmap value (exclusive); Panoptic-DeepLab uses 0.1.
      nms_kernel: side of the max-pool NMS window (Panoptic-DeepLab 7; deeplab2 Cityscapes 13, COCO 41).
      keep_k_centers: maximum number of instances per image (Panoptic-DeepLab 200).
      stuff_area_limit: stuff segments with fewer pixels become void (deeplab2 Cityscapes 2048, COCO 4096).
    """

    def __init__(self, *, num_classes: int, label_divisor: int, ignore_label: int, thing_classes: Sequence[int],
                 center_threshold: float = 0.1, nms_kernel: int = 7, keep_k_centers: int = 200,
                 stuff_area_limit: int = 0):
        if keep_k_centers < 1 or keep_k_centers >= label_divisor:
            raise ValueError(f'PostProcessor: `keep_k_centers` must lie in [1, label_divisor={label_divisor}) so that '
                             f'instance ids fit the panoptic encoding. Received: {keep_k_centers}')
        if center_threshold < 0:
            raise ValueError(f'PostProcessor: `center_threshold` must be >= 0. Received: {center_threshold}')
        if nms_kernel < 1:
            raise ValueError(f'PostProcessor: `nms_kernel` must be positive. Received: {nms_kernel}')
        bad = [c for c in thing_classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f'PostProcessor: thing classes {bad} are outside [0, num_classes={num_classes})')
        self.num_classes = num_classes
        self.label_divisor = label_divisor
        self.ignore_label = ignore_label
        self.thing_classes = tuple(int(c) for c in thing_classes)
        self.center_threshold = center_threshold
        self.nms_kernel = nms_kernel
        self.keep_k_centers = keep_k_centers
        self.stuff_area_limit = stuff_area_limit

    @classmethod
    def from_dataset(cls, descriptor: Any, **options: Any) -> 'PostProcessor':
        """Takes the label encoding from a `DatasetDescriptor`; `options` set the center and stuff settings."""
        return cls(num_classes=descriptor.num_classes, label_divisor=descriptor.panoptic_label_divisor,
                   ignore_label=descriptor.ignore_label, thing_classes=descriptor.thing_classes, **options)

    def get_config(self) -> Dict[str, Any]:
        return {
            'num_classes': self.num_classes,
            'label_divisor': self.label_divisor,
            'ignore_label': self.ignore_label,
            'thing_classes': list(self.thing_classes),
            'center_threshold': self.center_threshold,
            'nms_kernel': self.nms_kernel,
            'keep_k_centers': self.keep_k_centers,
            'stuff_area_limit': self.stuff_area_limit,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> 'PostProcessor':
        return cls(**config)

    def __call__(self, outputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Raw outputs (`semantic_logits` or `semantic_probs`, `center_heatmap`, `offset_map`) -> predictions."""
        probs = semantic_probabilities(outputs)
        if probs.shape[-1] != self.num_classes:
            raise ValueError(f'PostProcessor: expected {self.num_classes} classes in the semantic output. '
                             f'Received shape: {probs.shape}')
        return panoptic_deeplab_post_process(
            probs, outputs[common.PRED_CENTER_HEATMAP_KEY], outputs[common.PRED_OFFSET_MAP_KEY],
            label_divisor=self.label_divisor, ignore_label=self.ignore_label, thing_classes=self.thing_classes,
            center_threshold=self.center_threshold, nms_kernel=self.nms_kernel,
            keep_k_centers=self.keep_k_centers, stuff_area_limit=self.stuff_area_limit)
