"""Ownership of a training run's folder: an exclusive lock, the removal of the checkpoint temporaries a killed run
leaves behind, and the copy of the resolved config.

Two trainers writing one folder overwrite each other's `ckpt-N` silently, so training takes `training.lock` (JSON:
host, pid, start time) in the experiment folder first. A second trainer stops with an error naming the holder. A
lock left by a process that is gone (same host: no such pid, or the pid now belongs to a younger process) is taken
over with a warning; a lock from another host cannot be checked from here, and the message says to delete it once
that trainer is known to be stopped. In a multi-worker run only the chief holds it (the other workers write
nothing to model_dir). Evaluation-only modes read without it.

On a local file system the lock is created atomically (a link that fails when the file exists). On object stores
(gs://) there is no exclusive create: the check and the write are two steps, so two trainers started within the
same second may both pass.
"""

import datetime
import json
import os
import re
import socket
import sys
import tempfile
import uuid
from typing import List, Optional

import tensorflow as tf
from absl import logging
from google.protobuf import text_format

from deeplab_axial import temp_files
from deeplab_axial.protos import config_pb2

LOCK_NAME = 'training.lock'
CONFIG_COPY_NAME = 'config.textproto'
# CheckpointManager's sharded save writes `ckpt-N_temp/` and merges it into `ckpt-N.*`; the state file `checkpoint`
# is written as `checkpoint.tmp<hex>` and renamed. A kill between the two steps leaves these behind.
_TEMPORARY = re.compile(r'^(ckpt-\d+_temp|checkpoint\.tmp[0-9a-f]{32})$')


class ModelDirLockedError(RuntimeError):
    """Another trainer holds the experiment folder; the message names it."""


def _process_start(pid: int) -> Optional[int]:
    """The process's start time in clock ticks since boot (Linux /proc), or None where unknown."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return int(f.read().rsplit(')', 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _is_alive(pid: int, process_start: Optional[int]) -> bool:
    if not temp_files.process_runs(pid):
        return False
    # A live pid that started at another time is a newer process that reused the number.
    return process_start is None or _process_start(pid) in (None, process_start)


class TrainingLock:
    """`with TrainingLock(experiment_dir): train()`; raises ModelDirLockedError if another trainer holds it."""

    def __init__(self, experiment_dir: str):
        self.path = os.path.join(experiment_dir, LOCK_NAME)
        self._record = {'host': socket.gethostname(), 'pid': os.getpid(), 'process_start': _process_start(os.getpid()),
                        'start_time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                        'command': ' '.join(sys.argv)}

    def _read(self) -> Optional[dict]:
        try:
            with tf.io.gfile.GFile(self.path) as f:
                return json.loads(f.read())
        except (tf.errors.NotFoundError, json.JSONDecodeError):
            return None

    def _create(self) -> bool:
        """Writes the lock if no file is there; False if one is."""
        text = json.dumps(self._record, indent=1)
        if '://' in self.path:
            if tf.io.gfile.exists(self.path):
                return False
            tmp = f'{self.path}.tmp{uuid.uuid4().hex}'
            with tf.io.gfile.GFile(tmp, 'w') as f:
                f.write(text)
            tf.io.gfile.rename(tmp, self.path, overwrite=True)
            return True
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=LOCK_NAME + '.tmp')
        try:
            with os.fdopen(fd, 'w') as f:
                f.write(text)
            os.link(tmp, self.path)  # Atomic, and fails if the lock exists.
            return True
        except FileExistsError:
            return False
        finally:
            os.remove(tmp)

    def acquire(self) -> None:
        for _ in range(2):
            if self._create():
                return
            holder = self._read() or {}
            if not holder and tf.io.gfile.exists(self.path):
                raise ModelDirLockedError(f'{self.path} exists but is unreadable; if no trainer is using '
                                          f'{os.path.dirname(self.path)}, delete it and start again')
            if holder and holder.get('host') == self._record['host'] and not _is_alive(
                    int(holder.get('pid', -1)), holder.get('process_start')):
                logging.warning('Taking over the lock of a trainer that is gone (host %s, pid %s, started %s): %s',
                                holder.get('host'), holder.get('pid'), holder.get('start_time'), self.path)
                tf.io.gfile.remove(self.path)
                continue
            if holder:
                raise ModelDirLockedError(
                    f'{os.path.dirname(self.path)} is in use by another trainer (host {holder.get("host")}, pid '
                    f'{holder.get("pid")}, started {holder.get("start_time")}: {holder.get("command")}). Stop it or '
                    f'train into another --model_dir; if that trainer is no longer running, delete {self.path}')
        raise ModelDirLockedError(f'Could not take {self.path}: another trainer took it at the same time')

    def release(self) -> None:
        """Removes the lock if it is still ours."""
        holder = self._read()
        if holder and all(holder.get(k) == self._record[k] for k in ('host', 'pid', 'start_time')):
            tf.io.gfile.remove(self.path)

    def __enter__(self) -> 'TrainingLock':
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


def remove_checkpoint_temporaries(directory: str) -> List[str]:
    """Deletes the checkpoint temporaries in `directory` (a killed save's `ckpt-N_temp/`, `checkpoint.tmp<hex>`);
    only the holder of the folder's lock may call it. Returns the removed paths."""
    if not tf.io.gfile.isdir(directory):
        return []
    removed = []
    for name in sorted(tf.io.gfile.listdir(directory)):
        name = name.rstrip('/')
        if _TEMPORARY.match(name):
            path = os.path.join(directory, name)
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)
            removed.append(path)
    if removed:
        logging.info('Removed checkpoint temporaries left by an interrupted save: %s', removed)
    return removed


def write_config_copy(config: config_pb2.ExperimentOptions, experiment_dir: str) -> str:
    """Saves the resolved config next to the checkpoints (temp name, then rename); returns its path."""
    path = os.path.join(experiment_dir, CONFIG_COPY_NAME)
    tmp = path + '.tmp'
    with tf.io.gfile.GFile(tmp, 'w') as f:
        f.write('# proto-file: deeplab_axial/protos/config.proto\n# proto-message: ExperimentOptions\n')
        f.write(text_format.MessageToString(config))
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path
