"""This process's place in a multi-worker run, and the few exchanges between workers that the trainer needs.

tf.distribute's multi-worker conventions, followed by the controller and the evaluators:
- the chief (task 'chief', or 'worker' 0 when the cluster has no chief) is the only one that writes to model_dir;
- every worker takes part in every collective, in the same order.

`gather_objects` exchanges one picklable object per worker through the strategy's own collectives (no side channel
and no shared file): the restored step (all workers must agree), evaluation accumulators (merged in image order)
and the chief's choice of checkpoint in continuous evaluation. One-process strategies (OneDevice, Mirrored, TPU,
whose single client drives every TPU host) have one worker, and nothing is exchanged.
"""

import dataclasses
import pickle
from typing import Any, List

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class WorkerInfo:
    """index: 0..num_workers - 1, the chief first (the order of replica ids and of gathered values)."""
    index: int = 0
    num_workers: int = 1
    task: str = 'chief'

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def worker_info(strategy: tf.distribute.Strategy) -> WorkerInfo:
    """The calling process's WorkerInfo under `strategy` (one worker unless MultiWorkerMirroredStrategy)."""
    resolver = getattr(strategy, 'cluster_resolver', None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return WorkerInfo()
    spec = resolver.cluster_spec().as_dict()
    chiefs, workers = len(spec.get('chief', [])), len(spec.get('worker', []))
    if chiefs + workers <= 1:
        return WorkerInfo()
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    # MultiWorkerMirroredStrategy numbers replicas chief first, then worker 0, 1, ...
    index = task_id if task_type == 'chief' else chiefs + task_id
    return WorkerInfo(index=index, num_workers=chiefs + workers, task=f'{task_type}:{task_id}')


def _gather_int64(strategy: tf.distribute.Strategy, value: np.ndarray, filler: np.ndarray) -> np.ndarray:
    """Concatenates, in replica order, `value` from each worker's first local replica and `filler` from the
    others (all shaped alike)."""
    num_local = len(strategy.extended.worker_devices)

    def value_fn(context):
        first = context.replica_id_in_sync_group % num_local == 0
        return tf.constant(value if first else filler, tf.int64)

    per_replica = strategy.experimental_distribute_values_from_function(value_fn)
    return strategy.gather(per_replica, axis=0).numpy()


def gather_bytes(strategy: tf.distribute.Strategy, worker: WorkerInfo, payload: bytes) -> List[bytes]:
    """Every worker's `payload`, in worker order; a collective that each worker must call once."""
    if worker.num_workers == 1:
        return [payload]
    num_local = len(strategy.extended.worker_devices)
    lengths = _gather_int64(strategy, np.array([len(payload)]), np.array([-1]))
    words = -(-int(lengths.max()) // 8)
    padded = np.frombuffer(payload.ljust(8 * words, b'\0'), np.int64)
    gathered = _gather_int64(strategy, padded, np.zeros_like(padded)).reshape(len(lengths), words)
    return [gathered[i].tobytes()[:lengths[i]] for i in range(0, len(lengths), num_local)]


def gather_objects(strategy: tf.distribute.Strategy, worker: WorkerInfo, obj: Any) -> List[Any]:
    """Every worker's `obj` (picklable), in worker order; a collective that each worker must call once."""
    return [pickle.loads(p) for p in gather_bytes(strategy, worker, pickle.dumps(obj))]
