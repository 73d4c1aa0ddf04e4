"""Runs a function of a batch on every local replica, for evaluation batches of ANY size.

deeplab2 evaluated panoptic models on one device with batch 1. Here an eval batch of n examples (the last one may be
partial) is padded to a fixed multiple of the local replica count, split evenly over the replicas, run with
`strategy.run`, and the per-replica outputs are concatenated back on the host without the padding. Every call has
the same static per-replica shape, so the function is traced (and XLA-compiled) once.
"""

import math
from typing import Callable, Dict

import numpy as np
import tensorflow as tf


class ReplicaRunner:
    """Calls `fn(inputs) -> {name: [batch, ...]}` on batches of at most `batch_size` examples, on all replicas.

    Args:
      strategy: the distribution strategy the model was built under.
      fn: per-replica function of a dict of batched tensors; its outputs keep the batch dimension first.
      batch_size: the largest batch passed to `__call__` (the config's global eval batch size).
      jit_compile: XLA-compile `fn`.
    """

    def __init__(self, strategy: tf.distribute.Strategy, fn: Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]],
                 batch_size: int, jit_compile: bool = False):
        if batch_size <= 0:
            raise ValueError(f'ReplicaRunner: `batch_size` must be positive. Received: {batch_size}')
        self._strategy = strategy
        self._num_local = len(strategy.extended.worker_devices)
        self._per_replica = math.ceil(batch_size / self._num_local)
        self.padded_batch_size = self._per_replica * self._num_local
        self._fn = tf.function(fn, jit_compile=jit_compile) if jit_compile else fn
        self._run = tf.function(self._run_fn)

    def _run_fn(self, inputs: Dict[str, tf.Tensor]):
        per_replica, num_local = self._per_replica, self._num_local

        def value_fn(context):
            # Multi-worker replica ids are global; each worker splits its own batch over its local replicas.
            index = context.replica_id_in_sync_group % num_local
            return {k: v[index * per_replica:(index + 1) * per_replica] for k, v in inputs.items()}

        distributed = self._strategy.experimental_distribute_values_from_function(value_fn)
        return self._strategy.run(self._fn, args=(distributed,))

    def __call__(self, inputs: Dict[str, tf.Tensor]) -> Dict[str, np.ndarray]:
        """Outputs of the batch as numpy arrays, [n, ...] for an input batch of n examples."""
        n = int(next(iter(inputs.values())).shape[0])
        if n > self.padded_batch_size:
            raise ValueError(f'ReplicaRunner: a batch of {n} examples exceeds the eval batch size '
                             f'{self.padded_batch_size}')
        padded = {k: tf.pad(v, [[0, self.padded_batch_size - n]] + [[0, 0]] * (v.shape.rank - 1))
                  for k, v in inputs.items()}
        outputs = self._run(padded)
        local = self._strategy.experimental_local_results(outputs)
        return {k: np.concatenate([np.asarray(part[k]) for part in local], axis=0)[:n] for k in local[0]}
