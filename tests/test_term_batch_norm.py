"""TermBatchNormalization: folded scale/shift against hand-computed batch norm, and cross-replica statistics."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import tensorflow as tf

from deeplab_axial.model.layers.term_batch_norm import TermBatchNormalization, masked_moments


def test_scale_and_shift_reproduce_batch_norm(rng):
    layer = TermBatchNormalization(2, 3, momentum=0.9, epsilon=1e-3)
    layer.build()
    layer.gamma.assign(rng.uniform(0.5, 2, (2, 3)).astype(np.float32))
    layer.beta.assign(rng.normal(size=(2, 3)).astype(np.float32))
    terms = [rng.normal(2.0, 3.0, (5, 7, 3)).astype(np.float32) for _ in range(2)]
    moments = [masked_moments(t, [0, 1]) for t in terms]
    scale, shift = layer(moments, training=True)
    got = sum(scale[i].numpy() * terms[i] for i in range(2)) + shift.numpy().sum(0)
    expected = sum((t - t.mean((0, 1))) / np.sqrt(t.var((0, 1)) + 1e-3) * layer.gamma.numpy()[i]
                   + layer.beta.numpy()[i] for i, t in enumerate(terms))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), 0.1 * np.stack([t.mean((0, 1)) for t in terms]),
                               rtol=1e-5)


def test_masked_moments_count_only_unmasked_entries(rng):
    x = rng.normal(size=(4, 6)).astype(np.float32)
    mask = (rng.uniform(size=(1, 6)) > 0.4).astype(np.float32)
    mean, mean_square = masked_moments(tf.constant(x), [0, 1], tf.constant(mask), float(4 * mask.sum()))
    kept = x[:, mask[0] > 0]
    np.testing.assert_allclose([mean.numpy(), mean_square.numpy()], [kept.mean(), (kept ** 2).mean()], rtol=1e-5)


_REPLICA_SCRIPT = textwrap.dedent('''
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from deeplab_axial.model.layers.term_batch_norm import TermBatchNormalization
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    with strategy.scope():
        layer = TermBatchNormalization(1, 2, momentum=0.0, synchronized=True)
        layer.build()
    def step():
        r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
        mean = tf.stack([r * 2.0, r + 1.0])  # replica 0: (0, 1), replica 1: (2, 2)
        return layer([(mean, tf.square(mean) + 1.0)], training=True)
    strategy.run(step)
    print(json.dumps([layer.moving_mean.numpy().tolist(), layer.moving_variance.numpy().tolist()]))
''')


def test_synchronized_statistics_average_over_replicas():
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, '-c', _REPLICA_SCRIPT], capture_output=True, text=True, check=True,
                         cwd=repo)
    mean, variance = json.loads(out.stdout.strip().splitlines()[-1])
    # Means (0, 1) and (2, 2), each replica with variance 1: pooled mean (1, 1.5), pooled variance 1 + spread.
    np.testing.assert_allclose(mean, [[1.0, 1.5]], rtol=1e-5)
    np.testing.assert_allclose(variance, [[2.0, 1.25]], rtol=1e-5)
