"""PanopticEval's evaluation losses: the loss on the raw outputs post-processing reads, averaged over the eval images
(deeplab2's `losses/eval_<name>`), padded examples of a short last batch left out."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import dataset
from trainer import eval_results
from trainer import panoptic_eval

SYNTHETIC = dataset.get('synthetic_panoptic')
_SIZE = (4, 4)


class _MeanTimesWeight:
    """A stand-in for the training loss: per example, the mean of the raw output times the example's weight."""
    TARGET_KEYS = ('weight',)

    def __call__(self, y_true, y_pred):
        value = tf.reduce_mean(y_pred['raw'], axis=[1, 2, 3]) * y_true['weight']
        return {common.TOTAL_LOSS: value, 'double_loss': 2 * value}


def _post_process(raw):
    batch = tf.shape(raw['raw'])[0]
    zeros = tf.zeros([batch, *_SIZE], tf.int32)
    return {common.PRED_PANOPTIC_KEY: zeros, common.PRED_SEMANTIC_KEY: zeros,
            common.PRED_INSTANCE_SCORES_KEY: tf.zeros([batch, *_SIZE], tf.float32)}


def _batch(values, weights):
    n = len(values)
    return {
        common.IMAGE: tf.constant(np.array(values, np.float32)[:, None, None, None] * np.ones([n, *_SIZE, 3],
                                                                                            np.float32)),
        'weight': tf.constant(weights, tf.float32),
        common.GT_SIZE_RAW: tf.constant([_SIZE] * n, tf.int32),
        common.GT_SIZE_RESIZED: tf.constant([_SIZE] * n, tf.int32),
        common.IMAGE_NAME: tf.constant([f'image{v}' for v in values]),
        common.GT_PANOPTIC_RAW: tf.zeros([n, *_SIZE], tf.int32),
        common.GT_PANOPTIC_KEY: tf.zeros([n, *_SIZE], tf.int32),
    }


def test_eval_losses_are_the_mean_over_images_of_the_loss_on_the_raw_outputs(tmp_path):
    model_inputs = []

    def model(images, training):
        model_inputs.append(training)
        return {'raw': images + 1.0}

    evaluator = panoptic_eval.PanopticEval(
        tf.distribute.OneDeviceStrategy('/cpu:0'), model, _post_process, SYNTHETIC, 2, _SIZE, str(tmp_path),
        tf.Variable(7, dtype=tf.int64), num_vis_samples=0, metrics=('miou',), loss=_MeanTimesWeight())
    evaluator.update(_batch([1.0, 3.0], [1.0, 0.5]))
    evaluator.update(_batch([5.0], [2.0]))  # padded to the batch size 2; the padding is not an image
    metrics = evaluator.result()
    # Raw output = image + 1: losses 2 * 1, 4 * 0.5, 6 * 2 over three images.
    expected = (2.0 + 2.0 + 12.0) / 3
    assert metrics['losses/eval_total_loss'] == pytest.approx(expected)
    assert metrics['losses/eval_double_loss'] == pytest.approx(2 * expected)
    assert set(model_inputs) == {False}
    with open(os.path.join(str(tmp_path), eval_results.EVAL_RESULTS_NAME)) as f:
        assert json.load(f)['metrics']['losses/eval_total_loss'] == pytest.approx(expected)


def test_no_loss_no_eval_losses(tmp_path):
    evaluator = panoptic_eval.PanopticEval(
        tf.distribute.OneDeviceStrategy('/cpu:0'), lambda images, training: {'raw': images}, _post_process,
        SYNTHETIC, 2, _SIZE, str(tmp_path), tf.Variable(0, dtype=tf.int64), num_vis_samples=0, metrics=('miou',))
    evaluator.update(_batch([1.0], [1.0]))
    assert not [k for k in evaluator.result() if k.startswith('losses/')]


def test_every_file_the_evaluation_writes_takes_the_umask_mode(tmp_path):
    """eval_results.json, the prediction PNGs and panoptic_pred.json (and the summaries): 0o666 less the umask, so
    that teammates on a shared file system can read them (tempfile.mkstemp would give 0o600)."""
    previous = os.umask(0o027)
    try:
        evaluator = panoptic_eval.PanopticEval(
            tf.distribute.OneDeviceStrategy('/cpu:0'), lambda images, training: {'raw': images}, _post_process,
            SYNTHETIC, 2, _SIZE, str(tmp_path), tf.Variable(3, dtype=tf.int64), save_predictions=True,
            num_vis_samples=1, metrics=('pq',))
        evaluator.update(_batch([1.0, 2.0], [1.0, 1.0]))
        evaluator.result()
    finally:
        os.umask(previous)
    written = {os.path.relpath(os.path.join(d, n), tmp_path): os.stat(os.path.join(d, n)).st_mode & 0o777
               for d, _, names in os.walk(tmp_path) for n in names}
    ours = {'eval_results.json', 'predictions/panoptic_pred.json', 'predictions/panoptic_pred/image1.0.png',
            'predictions/panoptic_pred/image2.0.png'}
    assert ours <= set(written), sorted(written)
    assert {path: oct(mode) for path, mode in written.items()} == {path: oct(0o640) for path in written}
