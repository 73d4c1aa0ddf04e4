"""tf.data input pipelines: panoptic (Panoptic-DeepLab targets) and classification (ImageNet-style).

    options = DataOptions(dataset='cityscapes_panoptic', file_pattern='/data/cs/train-*.tfrecord',
                          batch_size=8, crop_size=(1025, 2049), min_scale_factor=0.5, max_scale_factor=2.0,
                          scale_factor_step_size=0.1, is_training=True)
    ds = build_dataset(options)                       # or, under a strategy:
    ds = strategy.distribute_datasets_from_function(lambda ctx: build_dataset(options, ctx))

Sources: TFRecords by file pattern (local or gs://, comma-separated patterns allowed) written by our converters
(or deeplab2's, label format 'raw'), TPU-style ImageNet TFRecords, or TFDS (`file_pattern='tfds:coco/2017_panoptic'`
or `'tfds:imagenet2012'`, split from `tfds_split`). A TFRecord that does not decode (a corrupt image, a label of
another size) stops the pipeline with an error naming its file and record index.

Training samples: `image` [crop_h, crop_w, 3] float32 0..255 plus the targets of
`targets.generate_panoptic_targets`. Evaluation samples: the image padded to `crop_size` (never cropped; or the
full image when crop_size is None), the same targets, and the labels at original resolution (`panoptic_raw`,
`semantic_raw`, `is_crowd_raw`), `size_raw` [2], `size_resized` [2] (the image size after resize_to_range, before
padding: predictions[:size_resized] resized to size_raw line up with the raw labels) and `image_name`. Batched
evaluation pads raw labels to the largest in the batch with void; slice them with `size_raw`.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import autoaugment
from deeplab_axial.data import data_utils
from deeplab_axial.data import dataset as dataset_lib
from deeplab_axial.data import preprocessing
from deeplab_axial.data import targets

TFDS_PREFIX = 'tfds:'


@dataclasses.dataclass
class DataOptions:
    """Everything the input pipeline needs; the trainer maps its protobuf config onto it.

    Attributes:
      dataset: registered name, a DatasetDescriptor, or a dict for DatasetDescriptor.from_dict.
      file_pattern: TFRecord glob(s) (a list, or comma-separated), or 'tfds:<name>' for TFDS.
      batch_size: GLOBAL batch size; per-pipeline size comes from the InputContext when one is given.
      crop_size: (height, width). Training crops to it; evaluation pads to it (None = keep full image).
      min_resize_value, max_resize_value, resize_factor: deeplab2's resize_to_range before augmentation (shorter
        side to min, longer side at most max, sides k * factor + 1); 0 disables. Evaluation keeps raw labels at
        the original size and reports the resized size in `size_resized`.
      min_scale_factor, max_scale_factor, scale_factor_step_size: training random scale (step 0 = uniform).
      autoaugment_policy_name: deeplab2's colour policy name (see autoaugment.py), '' or None for none.
      sigma, increase_small_instance_weights, small_instance_threshold, small_instance_weight: target options.
      is_training: training (shuffle, repeat, augment) or evaluation (one ordered pass).
      seed: makes shuffling and augmentation reproducible; None = fresh randomness.
      deterministic: keep element order fixed under parallel map/interleave.
      shuffle_buffer_size: records in the shuffle buffer (training).
      drop_remainder: drop the last partial batch (training default; evaluation keeps it when False).
      repeat: repeat forever; None = is_training.
      tfds_split: split read from TFDS sources ('train', 'validation', ...).
      tfds_data_dir: TFDS data_dir (None = TFDS default).
      class_label_offset: subtracted from `image/class/label` of TFRecords; 1 for TPU-style ImageNet files,
        whose labels are 1..1000 (0 was background), 0 for 0-based files.
    """

    dataset: Union[str, dataset_lib.DatasetDescriptor, Dict[str, Any]] = 'synthetic_panoptic'
    file_pattern: Union[str, Sequence[str]] = ''
    batch_size: int = 8
    crop_size: Optional[Tuple[int, int]] = (129, 129)
    min_resize_value: int = 0
    max_resize_value: int = 0
    resize_factor: int = 0
    min_scale_factor: float = 1.0
    max_scale_factor: float = 1.0
    scale_factor_step_size: float = 0.0
    autoaugment_policy_name: Optional[str] = None
    sigma: float = 8.0
    increase_small_instance_weights: bool = True
    small_instance_threshold: int = 4096
    small_instance_weight: float = 3.0
    is_training: bool = True
    seed: Optional[int] = None
    deterministic: bool = False
    shuffle_buffer_size: int = 256
    drop_remainder: Optional[bool] = None
    repeat: Optional[bool] = None
    tfds_split: str = 'train'
    tfds_data_dir: Optional[str] = None
    class_label_offset: int = 1

    @property
    def descriptor(self) -> dataset_lib.DatasetDescriptor:
        if isinstance(self.dataset, dataset_lib.DatasetDescriptor):
            return self.dataset
        if isinstance(self.dataset, dict):
            return dataset_lib.DatasetDescriptor.from_dict(self.dataset)
        return dataset_lib.get(self.dataset)


def _patterns(file_pattern: Union[str, Sequence[str]]) -> Sequence[str]:
    if isinstance(file_pattern, str):
        file_pattern = file_pattern.split(',')
    return [p.strip() for p in file_pattern if p.strip()]


def _tfds_name(file_pattern: Union[str, Sequence[str]]) -> Optional[str]:
    """'coco/2017_panoptic' for file_pattern 'tfds:coco/2017_panoptic', else None."""
    patterns = _patterns(file_pattern)
    if any(p.startswith(TFDS_PREFIX) for p in patterns):
        if len(patterns) != 1:
            raise ValueError(f'A "tfds:" file_pattern cannot be mixed with other patterns. Received: {patterns}')
        return patterns[0][len(TFDS_PREFIX):]
    return None


def list_files(file_pattern: Union[str, Sequence[str]]) -> Sequence[str]:
    """Sorted files matching glob patterns (a list or comma-separated; tf.io.gfile, so gs:// works)."""
    files = []
    for pattern in _patterns(file_pattern):
        matched = tf.io.gfile.glob(pattern)
        if not matched:
            raise FileNotFoundError(f'file_pattern {pattern!r} matches no files')
        files.extend(matched)
    if not files:
        raise ValueError('DataOptions.file_pattern is empty; give TFRecord globs or "tfds:<name>"')
    return sorted(set(files))


def decode_panoptic_example(serialized: tf.Tensor, label_divisor: int) -> Dict[str, tf.Tensor]:
    """Parses one panoptic TFExample -> image uint8 [H, W, 3], panoptic int32 [H, W], image_name string.

    Label formats: PNG-packed ids (ours), 'raw' int32 bytes (deeplab2), 'png' semantic-only (deeplab2; the
    panoptic label becomes semantic * label_divisor).
    """
    parsed = tf.io.parse_single_example(serialized, {
        common.KEY_ENCODED_IMAGE: tf.io.FixedLenFeature([], tf.string),
        common.KEY_IMAGE_FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=''),
        common.KEY_IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
        common.KEY_IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64),
        common.KEY_ENCODED_LABEL: tf.io.FixedLenFeature([], tf.string, default_value=''),
        common.KEY_LABEL_FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=''),
    })
    image = tf.io.decode_image(parsed[common.KEY_ENCODED_IMAGE], channels=3, expand_animations=False)
    height = tf.cast(parsed[common.KEY_IMAGE_HEIGHT], tf.int32)
    width = tf.cast(parsed[common.KEY_IMAGE_WIDTH], tf.int32)
    encoded, label_format = parsed[common.KEY_ENCODED_LABEL], parsed[common.KEY_LABEL_FORMAT]
    tf.debugging.assert_greater(tf.strings.length(encoded), 0, message=(
        f'A record has no panoptic label ({common.KEY_ENCODED_LABEL}); panoptic training/evaluation needs one'))

    def from_png():
        rgb = tf.cast(tf.io.decode_png(encoded, channels=3), tf.int32)
        return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]

    def from_raw():
        return tf.reshape(tf.io.decode_raw(encoded, tf.int32), [height, width])

    def from_semantic_png():
        return tf.cast(tf.io.decode_png(encoded, channels=1)[..., 0], tf.int32) * label_divisor

    panoptic = tf.case([(tf.equal(label_format, data_utils.PANOPTIC_PNG_FORMAT), from_png),
                        (tf.equal(label_format, data_utils.RAW_INT32_FORMAT), from_raw),
                        (tf.equal(label_format, 'png'), from_semantic_png)],
                       default=from_png, exclusive=True)
    image = tf.ensure_shape(image, [None, None, 3])
    tf.debugging.assert_equal(tf.shape(image)[:2], tf.shape(panoptic), message=(
        'A record\'s panoptic label and image differ in size'))
    return {common.IMAGE: image, 'panoptic': tf.ensure_shape(panoptic, [None, None]),
            common.IMAGE_NAME: parsed[common.KEY_IMAGE_FILENAME]}


def decode_or_flag(decode: Callable[[tf.Tensor], Any], serialized: tf.Tensor) -> Tuple[Any, tf.Tensor]:
    """(decode(serialized), True), or (zeros shaped like its output, False) when decoding raises.

    A graph cannot catch an op's error, but a one-element dataset that ignores errors can (the error is logged as a
    warning). Costs about 0.25 ms a record, next to milliseconds of image decoding.
    """
    attempt = tf.data.Dataset.from_tensors(serialized).map(lambda record: (decode(record), True))
    attempt = attempt.ignore_errors(log_warning=True)
    fallback = tf.nest.map_structure(lambda spec: tf.zeros([d or 0 for d in spec.shape], spec.dtype),
                                     attempt.element_spec[0])
    return attempt.concatenate(tf.data.Dataset.from_tensors((fallback, False))).take(1).get_single_element()


def _named_records(path: tf.Tensor) -> tf.data.Dataset:
    """(file, index, serialized record) for each record of one TFRecord file."""
    return tf.data.TFRecordDataset(path).enumerate().map(lambda index, record: (path, index, record))


def _decode_naming_the_record(decode: Callable[[tf.Tensor], Dict[str, tf.Tensor]], path: tf.Tensor,
                              index: tf.Tensor, serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
    """decode(serialized); a record that does not decode stops the pipeline with an error naming file and index."""
    example, decoded = decode_or_flag(decode, serialized)
    message = tf.strings.join([
        'Cannot decode record ', tf.strings.as_string(index), ' (counted from 0) of ', path,
        '; the decoder\'s message is logged above. To list every bad record: python -m '
        'deeplab_axial.data.build_coco_data --validate (or build_cityscapes_data)'])
    with tf.control_dependencies([tf.debugging.Assert(decoded, [message])]):
        return tf.nest.map_structure(tf.identity, example)


def decode_classification_example(serialized: tf.Tensor, label_offset: int) -> Dict[str, tf.Tensor]:
    """Parses a TPU-style ImageNet record: `image/encoded` + `image/class/label` (minus `label_offset`)."""
    parsed = tf.io.parse_single_example(serialized, {
        common.KEY_ENCODED_IMAGE: tf.io.FixedLenFeature([], tf.string),
        common.KEY_CLASS_LABEL: tf.io.FixedLenFeature([], tf.int64),
    })
    image = tf.io.decode_image(parsed[common.KEY_ENCODED_IMAGE], channels=3, expand_animations=False)
    label = tf.cast(parsed[common.KEY_CLASS_LABEL], tf.int32) - label_offset
    return {common.IMAGE: tf.ensure_shape(image, [None, None, 3]), 'label': label}


def _semantic_and_crowd(panoptic: tf.Tensor, descriptor: dataset_lib.DatasetDescriptor
                        ) -> Tuple[tf.Tensor, tf.Tensor]:
    semantic = panoptic // descriptor.panoptic_label_divisor
    instance = panoptic % descriptor.panoptic_label_divisor
    things = tf.constant(list(descriptor.thing_classes) or [-1], tf.int32)
    is_thing = tf.reduce_any(tf.equal(semantic[..., tf.newaxis], things), axis=-1)
    return semantic, is_thing & tf.equal(instance, 0)


class _Preprocessor:
    """Turns decoded examples into model-ready samples for one DataOptions."""

    def __init__(self, options: DataOptions):
        self.options = options
        self.descriptor = options.descriptor
        self.color_augment = autoaugment.get_policy(options.autoaugment_policy_name)
        if options.crop_size is not None and len(options.crop_size) != 2:
            raise ValueError(f'DataOptions.crop_size must be (height, width). Received: {options.crop_size}')
        if options.crop_size is None and (options.is_training or not self.descriptor.is_panoptic):
            raise ValueError('DataOptions.crop_size is needed for training and for classification '
                             '(e.g. (1025, 2049) or (224, 224)); only panoptic evaluation may omit it')

    def panoptic(self, example: Dict[str, tf.Tensor], seed: Optional[tf.Tensor]) -> Dict[str, tf.Tensor]:
        o, d = self.options, self.descriptor
        image = tf.cast(example[common.IMAGE], tf.float32)
        panoptic = example['panoptic']
        pad_value = d.ignore_label * d.panoptic_label_divisor
        image, label = preprocessing.resize_to_range(image, panoptic, o.min_resize_value, o.max_resize_value,
                                                     o.resize_factor)
        resized_size = tf.shape(label)[:2]
        if o.is_training:
            image, label = preprocessing.preprocess_panoptic_train(
                image, label, seed, crop_size=o.crop_size, min_scale=o.min_scale_factor,
                max_scale=o.max_scale_factor, scale_step=o.scale_factor_step_size, label_pad_value=pad_value,
                color_augment=self.color_augment)
        else:
            image, label = preprocessing.preprocess_panoptic_eval(image, label, o.crop_size, pad_value)
        sample = targets.generate_panoptic_targets(
            label, label_divisor=d.panoptic_label_divisor, ignore_label=d.ignore_label,
            thing_classes=d.thing_classes, sigma=o.sigma, small_instance_threshold=o.small_instance_threshold,
            small_instance_weight=o.small_instance_weight,
            increase_small_instance_weights=o.increase_small_instance_weights)
        sample[common.IMAGE] = image
        if not o.is_training:
            semantic, crowd = _semantic_and_crowd(panoptic, d)
            sample.update({common.GT_PANOPTIC_RAW: panoptic, common.GT_SEMANTIC_RAW: semantic,
                           common.GT_IS_CROWD_RAW: crowd, common.GT_SIZE_RAW: tf.shape(panoptic)[:2],
                           common.GT_SIZE_RESIZED: resized_size,
                           common.IMAGE_NAME: example[common.IMAGE_NAME]})
        return sample

    def classification(self, example: Dict[str, tf.Tensor], seed: Optional[tf.Tensor]) -> Dict[str, tf.Tensor]:
        o = self.options
        image = tf.cast(example[common.IMAGE], tf.float32)
        if o.is_training:
            image = preprocessing.classification_train(image, seed, o.crop_size)
        else:
            image = preprocessing.classification_eval(image, o.crop_size)
        return {common.IMAGE: image, common.GT_CLASS_LABEL_KEY: tf.cast(example['label'], tf.int32)}


def _records(options: DataOptions, input_context: Optional[tf.distribute.InputContext]) -> tf.data.Dataset:
    """(file, index, serialized record) tuples (or TFDS dicts) for this input pipeline: sharded, shuffled and
    repeated as asked.

    Training shards files where there are enough (each pipeline reads only its own). Evaluation shards records in
    file order: pipeline i of n reads records i, i + n, i + 2n, ..., so that per-pipeline metrics can be merged
    back in the order one pipeline reads them (trainer/sharded_eval.py).
    """
    training = options.is_training
    repeat = training if options.repeat is None else options.repeat
    num_pipelines = input_context.num_input_pipelines if input_context else 1
    pipeline_id = input_context.input_pipeline_id if input_context else 0
    tfds_name = _tfds_name(options.file_pattern)
    if tfds_name:
        from deeplab_axial.data import tfds_sources
        ds = tfds_sources.load(tfds_name, options.tfds_split, options.tfds_data_dir, shuffle_files=training,
                               seed=options.seed, input_context=input_context if training else None)
        if num_pipelines > 1 and not training:
            ds = ds.shard(num_pipelines, pipeline_id)
    else:
        files = list_files(options.file_pattern)
        ds = tf.data.Dataset.from_tensor_slices(list(files))
        shard_files = training and num_pipelines > 1 and len(files) >= num_pipelines
        if shard_files:
            ds = ds.shard(num_pipelines, pipeline_id)
        if training:
            ds = ds.shuffle(len(files), seed=options.seed, reshuffle_each_iteration=True)
            ds = ds.interleave(_named_records, cycle_length=min(len(files), 16),
                               num_parallel_calls=tf.data.AUTOTUNE, deterministic=options.deterministic)
        else:  # One file after the other: evaluation order is the file order.
            ds = ds.interleave(_named_records, cycle_length=1)
        if num_pipelines > 1 and not shard_files:
            ds = ds.shard(num_pipelines, pipeline_id)
    if repeat:
        ds = ds.repeat()
    if training:
        ds = ds.shuffle(options.shuffle_buffer_size, seed=options.seed, reshuffle_each_iteration=True)
    return ds


def build_dataset(options: DataOptions,
                  input_context: Optional[tf.distribute.InputContext] = None) -> tf.data.Dataset:
    """Builds the batched, prefetched dataset for `options` (see the module docstring for sample keys).

    With an `input_context`, this is one input pipeline's shard (see `_records`) batched at the per-replica batch
    size; a seed is offset by the pipeline id, so that pipelines do not repeat each other's random augmentation.
    """
    if input_context is not None and options.seed is not None and input_context.input_pipeline_id:
        options = dataclasses.replace(options, seed=options.seed + input_context.input_pipeline_id)
    descriptor = options.descriptor
    preprocessor = _Preprocessor(options)
    batch_size = (input_context.get_per_replica_batch_size(options.batch_size) if input_context
                  else options.batch_size)
    ds = _records(options, input_context)
    tfds_name = _tfds_name(options.file_pattern)
    if tfds_name:
        from deeplab_axial.data import tfds_sources
        decode = tfds_sources.decoder(tfds_name, descriptor)
    else:
        if descriptor.is_panoptic:
            decode_record = functools.partial(decode_panoptic_example,
                                              label_divisor=descriptor.panoptic_label_divisor)
        else:
            decode_record = functools.partial(decode_classification_example, label_offset=options.class_label_offset)
        decode = lambda named_record: _decode_naming_the_record(decode_record, *named_record)  # noqa: E731
    process = preprocessor.panoptic if descriptor.is_panoptic else preprocessor.classification

    def decode_and_process(record, seed):
        return process(decode(record), seed)

    # One independent [2] seed per example: stateless augmentation is reproducible given options.seed.
    seeds = tf.data.Dataset.random(seed=options.seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds))
    ds = ds.map(decode_and_process, num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=options.deterministic or not options.is_training)
    drop = options.is_training if options.drop_remainder is None else options.drop_remainder
    if descriptor.is_panoptic and not options.is_training:
        ds = ds.padded_batch(batch_size, padding_values=_eval_padding_values(ds.element_spec, descriptor),
                             drop_remainder=drop)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop)
    tf_options = tf.data.Options()
    tf_options.deterministic = options.deterministic
    # tf.data calls decode_or_flag's one-element dataset stateful, but it keeps no state from one record to the next:
    # a checkpointed iterator need not (and without this, could not) save it.
    tf_options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return ds.with_options(tf_options).prefetch(tf.data.AUTOTUNE)


def _eval_padding_values(spec: Dict[str, tf.TensorSpec], descriptor: dataset_lib.DatasetDescriptor
                         ) -> Dict[str, tf.Tensor]:
    """Void for labels, mean for images, zero for weights/targets (only used when sizes differ in a batch)."""
    void = descriptor.ignore_label * descriptor.panoptic_label_divisor
    special = {common.IMAGE: preprocessing.PAD_IMAGE_VALUE, common.GT_PANOPTIC_KEY: void,
               common.GT_PANOPTIC_RAW: void, common.GT_SEMANTIC_KEY: descriptor.ignore_label,
               common.GT_SEMANTIC_RAW: descriptor.ignore_label}
    defaults = {tf.string: '', tf.bool: False}
    return {k: tf.constant(special.get(k, defaults.get(s.dtype, 0)), dtype=s.dtype) for k, s in spec.items()}
