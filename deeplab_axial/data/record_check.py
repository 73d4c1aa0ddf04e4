"""Checks a converted panoptic TFRecord dataset: every record decodes as the input pipeline decodes it, and its label
fits its image and the dataset. The converters' `--validate`, for datasets converted elsewhere or copied since:

    python -m deeplab_axial.data.build_coco_data --validate --output_dir=/data/coco/tfrecord

Records are decoded in parallel by the pipeline's own decoder (`input_pipeline.decode_panoptic_example`); a record
that fails is decoded once more on its own for the decoder's message. Every problem is listed, one line each, naming
the file, the record index (from 0) and the image name; a truncated file is reported after its last whole record.
"""

import functools
import os
import sys
import time
from typing import Iterator, List, Optional, Sequence, TextIO

import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial import io_errors
from deeplab_axial.data import dataset as dataset_lib
from deeplab_axial.data import input_pipeline


class _Progress:
    """One self-overwriting line: files done, records checked, problems found, records per second."""

    def __init__(self, total_files: int, stream: Optional[TextIO]):
        self.total_files, self.stream = total_files, stream
        self.files = self.records = self.problems = 0
        self.start = self.last = time.perf_counter()

    def update(self, records: int = 0, problems: int = 0, files: int = 0) -> None:
        self.records, self.problems, self.files = self.records + records, self.problems + problems, self.files + files
        now = time.perf_counter()
        if self.stream is None or (now - self.last < 0.1 and not files):
            return
        self.last = now
        filled = int(30 * self.files / max(self.total_files, 1))
        self.stream.write(f'\r[{"#" * filled}{"." * (30 - filled)}] {self.files}/{self.total_files} files '
                          f'{self.records} records {self.problems} problems '
                          f'{self.records / max(now - self.start, 1e-9):.1f} records/s')
        if self.files == self.total_files:
            self.stream.write('\n')
        self.stream.flush()


def _decoder(descriptor: dataset_lib.DatasetDescriptor):
    """Serialized record -> (pipeline sample, (height, width) the record states)."""
    decode = functools.partial(input_pipeline.decode_panoptic_example,
                               label_divisor=descriptor.panoptic_label_divisor)

    def decode_with_stated_size(record: tf.Tensor):
        stated = tf.io.parse_single_example(record, {common.KEY_IMAGE_HEIGHT: tf.io.FixedLenFeature([], tf.int64),
                                                     common.KEY_IMAGE_WIDTH: tf.io.FixedLenFeature([], tf.int64)})
        return decode(record), tf.stack([stated[common.KEY_IMAGE_HEIGHT], stated[common.KEY_IMAGE_WIDTH]])

    return decode_with_stated_size


def _summaries(path: str, decode) -> tf.data.Dataset:
    """Per record of `path`: (index, decoded?, image name, image size, stated size, the label's distinct ids)."""

    def summarize(index, record):
        (example, stated), decoded = input_pipeline.decode_or_flag(decode, record)
        ids, _ = tf.unique(tf.reshape(example['panoptic'], [-1]))
        return (index, decoded, example[common.IMAGE_NAME], tf.shape(example[common.IMAGE])[:2],
                tf.cast(stated, tf.int32), ids)

    return (tf.data.TFRecordDataset(path).enumerate()
            .map(summarize, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def _decoder_message(path: str, index: int, decode) -> str:
    """Why record `index` of `path` does not decode: the decoder run on it alone."""
    record = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1)))
    try:
        decode(record)
    except (tf.errors.OpError, ValueError) as e:
        return io_errors.op_error_text(e)
    return 'it decodes on its own; decoding failed in the pipeline (out of memory?)'


def label_problem(ids: np.ndarray, descriptor: dataset_lib.DatasetDescriptor) -> Optional[str]:
    """What is wrong with a panoptic label's distinct ids (class * divisor + instance) for `descriptor`, or None.

    A class must be a dataset class or the ignore label; only thing classes carry instance ids.
    """
    divisor = descriptor.panoptic_label_divisor
    classes, instances = ids // divisor, ids % divisor
    known = (((classes >= 0) & (classes < descriptor.num_classes)) | (classes == descriptor.ignore_label)) & (ids >= 0)
    if not known.all():
        return (f'label ids {sorted(ids[~known].tolist())[:10]} have classes outside 0..{descriptor.num_classes - 1} '
                f'and are not the ignore label {descriptor.ignore_label} (panoptic id = class * {divisor} + instance)')
    stuff_with_instance = ~np.isin(classes, list(descriptor.thing_classes)) & (instances != 0)
    if stuff_with_instance.any():
        return (f'label ids {sorted(ids[stuff_with_instance].tolist())[:10]} give an instance to a stuff or void '
                f'class (panoptic id = class * {divisor} + instance; only thing classes have instances)')
    return None


def _file_problems(path: str, descriptor: dataset_lib.DatasetDescriptor, bar: _Progress) -> Iterator[str]:
    decode = _decoder(descriptor)
    index = -1
    try:
        for index, decoded, name, size, stated, ids in _summaries(path, decode).as_numpy_iterator():
            where = f'{path} record {index} ({name.decode(errors="replace")})'
            problem = None
            if not decoded:
                problem = f'{path} record {index}: {_decoder_message(path, index, decode)}'
            elif tuple(size) != tuple(stated):
                problem = (f'{where}: the image decodes to {size[0]}x{size[1]} (height x width); the record states '
                           f'{stated[0]}x{stated[1]}')
            else:
                reason = label_problem(ids, descriptor)
                problem = f'{where}: {reason}' if reason else None
            bar.update(records=1, problems=int(problem is not None))
            if problem:
                yield problem
    except tf.errors.DataLossError as e:
        bar.update(problems=1)
        yield f'{path}: cut short after record {index} (a partial copy or an interrupted write): ' \
              f'{io_errors.op_error_text(e)}'


def check_records(file_pattern: str, descriptor: dataset_lib.DatasetDescriptor,
                  progress: Optional[TextIO] = None) -> List[str]:
    """Every problem of the records matching `file_pattern` (one line each; empty when all are sound).

    Args:
      file_pattern: TFRecord glob(s), as DataOptions.file_pattern.
      descriptor: the dataset the records belong to (label divisor, classes, ignore label).
      progress: stream for a progress bar (None = none).

    Raises:
      FileNotFoundError: the pattern matches no file.
    """
    files = input_pipeline.list_files(file_pattern)
    bar = _Progress(len(files), progress)
    problems = []
    for path in files:
        problems.extend(_file_problems(path, descriptor, bar))
        bar.update(files=1)
    return problems


def validate_splits(output_dir: str, splits: Sequence[str], dataset_name: str, stream: TextIO = sys.stderr) -> int:
    """The converters' --validate: checks `{output_dir}/{split}-*.tfrecord` of each split; prints every problem.

    Returns:
      The exit status: 0 when every record is sound, 1 when some are not.
    """
    descriptor = dataset_lib.get(dataset_name)
    found = 0
    for split in splits:
        problems = check_records(os.path.join(output_dir, f'{split}-*.tfrecord'), descriptor, progress=stream)
        for problem in problems:
            stream.write(f'{problem}\n')
        stream.write(f'{split}: {len(problems)} problems\n')
        found += len(problems)
    return int(found > 0)
