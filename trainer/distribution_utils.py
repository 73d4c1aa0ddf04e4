"""Chooses the tf.distribute strategy for a run (deeplab2's `trainer/distribution_utils.py`, plus multi-worker).

Order (the first that applies wins):
1. `master` set: TPUStrategy. 'local' is the TPU of this TPU VM (`TPUClusterResolver(tpu='local')`, no cluster
   connection); a TPU name or `grpc://ip:port` is a TPU (pod slice) reached over the network, connected with
   `tf.config.experimental_connect_to_cluster`. The TPU system is initialised here.
2. TF_CONFIG in the environment: MultiWorkerMirroredStrategy over the workers it lists (each worker uses all its
   local GPUs; `num_gpus` is ignored). Its cluster may hold 'chief' and 'worker' tasks only.
3. `num_gpus` > 1: MirroredStrategy over GPU:0..num_gpus-1.
4. `num_gpus` == 1: OneDeviceStrategy on GPU:0.
5. `num_cpu_replicas` > 1 (`--num_cpu_replicas`): MirroredStrategy over that many logical CPU devices carved out
   of the host CPU, for trying the multi-replica path (sync batch norm, split batches, per-replica evaluation)
   without accelerators; it must run before TensorFlow initialises its devices, and combines with nothing above.
6. Otherwise OneDeviceStrategy on CPU:0.
"""

import json
import os
from typing import Optional

import tensorflow as tf


def create_strategy(master: Optional[str], num_gpus: int = 0, num_cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """Creates the strategy for the flags `--master`, `--num_gpus` (see the module docstring for the order).

    Raises:
      ValueError: more GPUs requested than visible, negative counts, a malformed TF_CONFIG, or num_cpu_replicas
        combined with another strategy.
      RuntimeError: logical CPU devices requested after TensorFlow initialised its devices.
    """
    if num_gpus < 0 or num_cpu_replicas < 0:
        raise ValueError(f'--num_gpus ({num_gpus}) and --num_cpu_replicas ({num_cpu_replicas}) must be >= 0')
    if num_cpu_replicas > 1 and (master or num_gpus or os.environ.get('TF_CONFIG')):
        raise ValueError(f'--num_cpu_replicas={num_cpu_replicas} cannot be combined with --master, --num_gpus or '
                         'TF_CONFIG; it is the one-host CPU strategy')
    if master:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=master)
        if master != 'local':
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if os.environ.get('TF_CONFIG'):
        _check_tf_config(os.environ['TF_CONFIG'])
        return tf.distribute.MultiWorkerMirroredStrategy()
    if num_gpus > 0:
        available = len(tf.config.list_physical_devices('GPU'))
        if num_gpus > available:
            raise ValueError(f'--num_gpus={num_gpus} but TensorFlow sees {available} GPU(s); check '
                             'CUDA_VISIBLE_DEVICES and that the GPU build of TensorFlow is installed')
        if num_gpus == 1:
            return tf.distribute.OneDeviceStrategy('/device:GPU:0')
        return tf.distribute.MirroredStrategy([f'/device:GPU:{i}' for i in range(num_gpus)])
    if num_cpu_replicas > 1:
        cpu = tf.config.list_physical_devices('CPU')[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_cpu_replicas)])
        except RuntimeError as e:
            raise RuntimeError('Logical CPU devices must be configured before TensorFlow initialises its devices; '
                               'call create_strategy first thing in the process') from e
        return tf.distribute.MirroredStrategy([f'/device:CPU:{i}' for i in range(num_cpu_replicas)])
    return tf.distribute.OneDeviceStrategy('/device:CPU:0')


def _check_tf_config(text: str) -> None:
    """TF_CONFIG must be JSON with a cluster of 'chief'/'worker' tasks and this process's task in it."""
    try:
        tf_config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f'The environment variable TF_CONFIG is not valid JSON: {e}') from None
    cluster = tf_config.get('cluster') if isinstance(tf_config, dict) else None
    task = tf_config.get('task') if isinstance(tf_config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError('TF_CONFIG must hold {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", '
                         f'"index": i}}. Received: {text}')
    unsupported = sorted(set(cluster) - {'chief', 'worker'})
    if unsupported:
        raise ValueError(f'TF_CONFIG cluster jobs {unsupported} are not supported (MultiWorkerMirroredStrategy '
                         'trains on "chief" and "worker" tasks; run evaluation as its own --mode=continuous_eval job)')
    task_type, index = task.get('type'), task.get('index')
    if task_type not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[task_type]):
        raise ValueError(f'TF_CONFIG task {task} is not in its cluster {cluster}')
