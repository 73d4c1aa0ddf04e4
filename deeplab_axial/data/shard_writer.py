"""Writes examples into sharded TFRecords: parallel across shards, resumable, never a partial file that looks done.

Shard i of split s is `{s}-{i:05d}-of-{n:05d}.tfrecord` (deeplab2's names). Each shard is written under a hidden
temporary name, `.{shard}.tmp-{host}-{pid}`, and renamed when complete, so an interrupted run leaves only finished
shards under final names, and no data pattern (`train*`, `train-*.tfrecord`) matches a temporary file. A rerun skips
the finished shards and removes the temporary files of its split that it owns: those written on this host by a
process that no longer runs (see deeplab_axial/temp_files.py). Examples are serialized deterministically, so a
converted dataset can be checked by checksum. Works on local paths and on any filesystem tf.io.gfile knows (gs://...).
"""

import concurrent.futures
import os
import threading
import time
from typing import Callable, List, Sequence, TypeVar

from absl import logging
import tensorflow as tf

from deeplab_axial import temp_files

T = TypeVar('T')


def shard_path(output_dir: str, split: str, shard: int, num_shards: int) -> str:
    return os.path.join(output_dir, f'{split}-{shard:05d}-of-{num_shards:05d}.tfrecord')


def _temp_prefix(output_dir: str, shard_name: str) -> str:
    return os.path.join(output_dir, f'.{shard_name}.tmp-')


def _check_no_other_sharding(output_dir: str, split: str, num_shards: int) -> None:
    """A rerun with another shard count would mix two layouts under one file pattern."""
    suffix = f'-of-{num_shards:05d}.tfrecord'
    others = [p for p in tf.io.gfile.glob(os.path.join(output_dir, f'{split}-*-of-*.tfrecord'))
              if not p.endswith(suffix)]
    if others:
        raise ValueError(f'{output_dir} already holds {split} shards of another shard count (e.g. {others[0]}); '
                         f'remove them or pass the same --num_shards as before (expected names ending in {suffix})')


def write_sharded_tfrecords(items: Sequence[T], make_example: Callable[[T], 'tf.train.Example'], output_dir: str,
                            split: str, num_shards: int, num_workers: int = 4) -> List[str]:
    """Converts `items` with `make_example` and writes them to `num_shards` TFRecord files.

    Items are split into contiguous chunks of ceil(len / num_shards). Shards already present are not rewritten.
    Conversion runs in `num_workers` threads (image/PNG codecs and TFRecord writes release the GIL).

    Returns:
      The paths of all shards of the split, in order.

    Raises:
      The first error of `make_example` (its message names the offending file); finished shards stay.
    """
    if not items:
        raise ValueError(f'No examples to write for split {split!r}')
    num_shards = max(1, min(num_shards, len(items)))
    tf.io.gfile.makedirs(output_dir)
    _check_no_other_sharding(output_dir, split, num_shards)
    temp_files.remove_stale(_temp_prefix(output_dir, f'{split}-*-of-*.tfrecord'))
    per_shard = -(-len(items) // num_shards)
    paths = [shard_path(output_dir, split, i, num_shards) for i in range(num_shards)]
    todo = [i for i, p in enumerate(paths) if not tf.io.gfile.exists(p)]
    logging.info('%s: %d examples, %d shards, %d already written, %d to write', split, len(items), num_shards,
                 num_shards - len(todo), len(todo))
    lock = threading.Lock()
    done = {'examples': 0, 'shards': 0}
    start = time.time()

    def write_shard(i: int) -> None:
        chunk = items[i * per_shard:(i + 1) * per_shard]
        tmp = temp_files.temp_name(_temp_prefix(output_dir, os.path.basename(paths[i])))  # one thread per shard
        try:
            with tf.io.TFRecordWriter(tmp) as writer:
                for item in chunk:
                    # Deterministic: the feature map's order would otherwise change between processes.
                    writer.write(make_example(item).SerializeToString(deterministic=True))
            tf.io.gfile.rename(tmp, paths[i], overwrite=True)
        except BaseException:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
            raise
        with lock:
            done['examples'] += len(chunk)
            done['shards'] += 1
            logging.info('%s: shard %d/%d written (%d/%d shards, %d examples this run, %.1f examples/s)', split,
                         i + 1, num_shards, done['shards'], len(todo), done['examples'],
                         done['examples'] / max(time.time() - start, 1e-6))

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, num_workers)) as pool:
        futures = [pool.submit(write_shard, i) for i in todo]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return paths
