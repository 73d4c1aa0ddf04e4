"""The Orbit-like controller on a tiny Keras model: training, checkpoints, exact resume, NaN stop, summaries,
continuous evaluation, and MirroredStrategy on two logical CPUs against one device."""

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.protos import trainer_pb2
from trainer import controller as controller_lib
from trainer import distribution_utils
from trainer import optimizer_builder
from trainer import train_step

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BATCH = 8
_TRUE_W = np.array([[1.0], [-2.0], [3.0], [0.5]], np.float32)


def _data(nan_batch=None) -> tf.data.Dataset:
    x = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
    y = x @ _TRUE_W
    if nan_batch is not None:
        x[nan_batch * _BATCH] = np.nan
        return tf.data.Dataset.from_tensor_slices({'x': x, 'y': y}).repeat().batch(_BATCH)
    return tf.data.Dataset.from_tensor_slices({'x': x, 'y': y}).shuffle(64, seed=3).repeat().batch(_BATCH)


def _model() -> keras.Model:
    return keras.Sequential([keras.Input((4,)),
                             keras.layers.Dense(8, kernel_initializer=keras.initializers.GlorotUniform(seed=1)),
                             keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=2))])


def _solver(optimizer='radam', lookahead=True) -> trainer_pb2.SolverOptions:
    return trainer_pb2.SolverOptions(optimizer=optimizer, use_lookahead=lookahead, base_learning_rate=0.02,
                                     warmup_steps=3, training_number_of_steps=40, lookahead_sync_period=3)


class _MSEEvaluator:
    """Mean squared error of a model over the eval set; records the steps it evaluated."""

    def __init__(self, model, global_step):
        self.model, self.global_step, self.steps = model, global_step, []

    def reset(self):
        self.total, self.count = 0.0, 0

    def update(self, inputs):
        err = tf.square(self.model(inputs['x'], training=False) - inputs['y'])
        self.total += float(tf.reduce_sum(err))
        self.count += int(tf.size(err))

    def result(self):
        self.steps.append(int(self.global_step.numpy()))
        return {'evaluation/mse': self.total / self.count}


def _controller(model_dir, *, strategy=None, solver=None, dataset=None, evaluator=False, **kwargs):
    strategy = strategy or tf.distribute.OneDeviceStrategy('/cpu:0')
    solver = solver or _solver()
    with strategy.scope():
        model = _model()
        optimizer = optimizer_builder.build_optimizer(solver)
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False)

        def loss_fn(inputs):
            err = tf.reduce_sum(tf.square(model(inputs['x'], training=True) - inputs['y']), axis=-1)
            return {common.TOTAL_LOSS: err}

        step_fn = train_step.make_train_step_fn(loss_fn, model.trainable_variables, optimizer, _BATCH,
                                                weight_decay=1e-3, clip_norm=5.0)
    eval_kwargs = {}
    if evaluator:
        eval_kwargs = dict(evaluator=_MSEEvaluator(model, global_step),
                           eval_dataset=tf.data.Dataset.from_tensor_slices(
                               {'x': np.eye(4, dtype=np.float32), 'y': _TRUE_W}).batch(2))
    defaults = dict(steps_per_loop=4, checkpoint_interval=4, summary_interval=4, max_to_keep=2,
                    global_batch_size=_BATCH, learning_rate_fn=lambda: optimizer.learning_rate)
    defaults.update(kwargs)
    controller = controller_lib.Controller(
        strategy, str(model_dir), global_step, {'model': model, common.CKPT_OPTIMIZER: optimizer},
        train_step_fn=step_fn, train_dataset=dataset if dataset is not None else _data(),
        output_keys=(common.TOTAL_LOSS, 'gradient_norm', 'weight_decay_loss'), **eval_kwargs, **defaults)
    return controller, model, optimizer


def test_trains_checkpoints_and_keeps_newest(tmp_path):
    controller, model, _ = _controller(tmp_path, solver=_solver('sgd', lookahead=False), steps_per_loop=3)
    first = controller.train(3)[common.TOTAL_LOSS]
    last = controller.train(30)[common.TOTAL_LOSS]
    assert controller.global_step == 30
    assert last < 0.5 * first
    # Saved at multiples of 4 and at the end; only the newest 2 kept.
    names = sorted(f for f in os.listdir(tmp_path) if f.endswith('.index'))
    assert names == ['ckpt-28.index', 'ckpt-30.index']


def test_resume_is_exact(tmp_path):
    """Interrupted at step 6 and resumed with fresh objects == 14 steps in one go (weights, slots, step, data)."""
    straight, model_a, opt_a = _controller(tmp_path / 'a')
    straight.train(14)

    first, _, _ = _controller(tmp_path / 'b')
    first.train(6)
    resumed, model_b, opt_b = _controller(tmp_path / 'b')
    assert resumed.global_step == 6
    resumed.train(14)
    assert resumed.global_step == 14
    for a, b in zip(model_a.weights, model_b.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    slots_a = [v.numpy() for v in opt_a.variables]
    slots_b = [v.numpy() for v in opt_b.variables]
    # The shared and RAdam's unused step counters, Lookahead's slow weights, RAdam's moments and velocities.
    assert len(slots_a) == len(slots_b) == 2 + 3 * len(model_a.weights)
    for a, b in zip(slots_a, slots_b):
        np.testing.assert_array_equal(a, b)


def test_resume_without_iterator_checkpoint_replays_data(tmp_path):
    """Control for the test above: without the iterator in the checkpoint the resumed run differs."""
    straight, model_a, _ = _controller(tmp_path / 'a')
    straight.train(14)
    first, _, _ = _controller(tmp_path / 'b', checkpoint_train_iterator=False)
    first.train(6)
    resumed, model_b, _ = _controller(tmp_path / 'b', checkpoint_train_iterator=False)
    resumed.train(14)
    assert not np.array_equal(model_a.weights[0].numpy(), model_b.weights[0].numpy())


def test_non_finite_loss_stops_at_its_step_naming_last_good_checkpoint(tmp_path):
    # Batch index 7 (the 8th step) holds a NaN; checkpoints every 4 steps.
    controller, _, _ = _controller(tmp_path, dataset=_data(nan_batch=7), steps_per_loop=5, checkpoint_interval=4)
    with pytest.raises(controller_lib.NonFiniteLossError) as e:
        controller.train(20)
    message = str(e.value)
    assert 'step 8' in message
    assert os.path.join(str(tmp_path), 'ckpt-4') in message
    assert controller.global_step == 8
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith('ckpt-4')


def test_summaries_and_progress_line(tmp_path, caplog):
    controller, _, _ = _controller(tmp_path)
    with caplog.at_level(logging.INFO, logger='absl'):
        controller.train(8)
    assert any('step 8/8' in r.getMessage() and 'images/s' in r.getMessage() and 'ETA' in r.getMessage()
               for r in caplog.records)
    tags = {}
    for path in tf.io.gfile.glob(str(tmp_path / 'train' / 'events.*')):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    assert tags['losses/train_total_loss'] == [4, 8]  # deeplab2's tag
    assert tags['learning_rate'] == [4, 8]
    assert 'images_per_second' in tags


def test_eta_counts_the_loops_after_the_first(tmp_path, caplog, monkeypatch):
    """The first loop traces the step (here 100 s of a fake clock), the others take 1 s per 4 steps: at step 8 of 16
    the ETA is the 8 steps left at 0.25 s each, not (101 s / 8 steps) * 8."""
    controller, _, _ = _controller(tmp_path)
    clock = [0.0]
    monkeypatch.setattr(controller_lib.time, 'time', lambda: clock[0])
    run_loop = controller._run_loop

    def timed_loop(num_steps):
        clock[0] += 1.0 if controller.global_step else 100.0
        return run_loop(num_steps)

    monkeypatch.setattr(controller, '_run_loop', timed_loop)
    with caplog.at_level(logging.INFO, logger='absl'):
        controller.train(16)
    etas = [r.getMessage().rsplit(', ', 1)[1] for r in caplog.records if r.getMessage().startswith('step ')]
    assert etas == ['ETA after the next loop (this one traced the step)', 'ETA 0:00:02', 'ETA 0:00:01',
                    'ETA 0:00:00']


def test_a_fresh_run_saves_its_initial_state_as_ckpt_0(tmp_path):
    controller, model, _ = _controller(tmp_path)
    initial = [w.numpy() for w in model.weights]
    controller.train(4)
    assert _checkpoint_steps(tmp_path) == [0, 4]
    assert tf.train.load_checkpoint(str(tmp_path / 'ckpt-0')).get_tensor(
        'global_step/.ATTRIBUTES/VARIABLE_VALUE') == 0
    fresh = _model()
    tf.train.Checkpoint(model=fresh).read(str(tmp_path / 'ckpt-0')).expect_partial()
    for saved, weight in zip(fresh.weights, initial):
        np.testing.assert_array_equal(saved.numpy(), weight)
    assert not np.array_equal(model.weights[0].numpy(), initial[0])  # ckpt-4 holds trained weights
    # A resumed run does not save its starting step again.
    resumed, _, _ = _controller(tmp_path, max_to_keep=5)
    resumed.train(8)
    assert _checkpoint_steps(tmp_path) == [0, 4, 8]


def _checkpoint_steps(directory) -> list:
    state = tf.train.get_checkpoint_state(str(directory))
    return sorted(int(p.rsplit('-', 1)[1]) for p in state.all_model_checkpoint_paths)


def test_image_summary_is_png_with_size_header(tmp_path):
    from trainer import summaries
    images = np.zeros((2, 5, 7, 3), np.uint8)
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        summaries.image('vis', images, step=1)
    writer.flush()
    (path,) = tf.io.gfile.glob(str(tmp_path / 'events.*'))
    values = [v for e in tf.compat.v1.train.summary_iterator(path) for v in e.summary.value]
    tensor = tf.make_ndarray(values[0].tensor)
    assert values[0].metadata.plugin_data.plugin_name == 'images'
    assert tensor[:2].tolist() == [b'7', b'5']
    assert tf.io.decode_png(tensor[2]).shape == (5, 7, 3)


def test_train_and_evaluate_writes_eval_summaries(tmp_path):
    controller, model, _ = _controller(tmp_path, evaluator=True)
    controller.train(8, eval_interval=4)
    evaluator = controller._evaluator
    assert evaluator.steps == [4, 8]
    expected = float(np.mean((model(np.eye(4, dtype=np.float32)).numpy() - _TRUE_W) ** 2))
    assert controller.evaluate()['evaluation/mse'] == pytest.approx(expected, rel=1e-5)
    assert controller.evaluate(steps=1)['evaluation/mse'] == pytest.approx(
        float(np.mean((model(np.eye(4, dtype=np.float32)[:2]).numpy() - _TRUE_W[:2]) ** 2)), rel=1e-5)


def test_continuous_eval_picks_up_new_checkpoints(tmp_path):
    trainer_controller, _, _ = _controller(tmp_path)
    trainer_controller.train(4)
    # An evaluation job with its own model, restoring whatever the training job saves.
    with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
        eval_model = _model()
        eval_step = tf.Variable(0, dtype=tf.int64, trainable=False)
    evaluator = _MSEEvaluator(eval_model, eval_step)
    eval_controller = controller_lib.Controller(
        tf.distribute.OneDeviceStrategy('/cpu:0'), str(tmp_path), eval_step, {'model': eval_model},
        evaluator=evaluator, eval_dataset=tf.data.Dataset.from_tensor_slices(
            {'x': np.eye(4, dtype=np.float32), 'y': _TRUE_W}).batch(4))
    results = {}
    thread = threading.Thread(target=lambda: results.update(
        eval_controller.evaluate_continuously(timeout=30, final_step=8)))
    thread.start()
    # checkpoints_iterator polls once a second: give it time to evaluate ckpt-4 first.
    while not evaluator.steps and thread.is_alive():
        thread.join(0.2)
    trainer_controller.train(8)
    thread.join(60)
    assert not thread.is_alive()
    assert evaluator.steps == [4, 8]
    assert eval_step.numpy() == 8
    assert 'evaluation/mse' in results


def test_continuous_eval_times_out_without_new_checkpoints(tmp_path):
    with tf.distribute.OneDeviceStrategy('/cpu:0').scope():
        model, step = _model(), tf.Variable(0, dtype=tf.int64)
    evaluator = _MSEEvaluator(model, step)
    controller = controller_lib.Controller(
        tf.distribute.OneDeviceStrategy('/cpu:0'), str(tmp_path), step, {'model': model}, evaluator=evaluator,
        eval_dataset=tf.data.Dataset.from_tensor_slices({'x': np.eye(4, dtype=np.float32), 'y': _TRUE_W}).batch(4))
    assert controller.evaluate_continuously(timeout=1) == {}
    assert evaluator.steps == []


def test_init_fn_runs_only_without_checkpoint(tmp_path):
    calls = []
    controller, _, _ = _controller(tmp_path, init_fn=lambda: calls.append(1))
    controller.train(4)
    _controller(tmp_path, init_fn=lambda: calls.append(2))
    assert calls == [1]


def test_finite_training_data_is_a_clear_error(tmp_path):
    controller, _, _ = _controller(tmp_path, dataset=_data().take(5))
    with pytest.raises(ValueError, match='ran out of batches after step 5'):
        controller.train(8)


def test_controller_argument_errors(tmp_path):
    with pytest.raises(ValueError, match='steps_per_loop'):
        _controller(tmp_path, steps_per_loop=0)
    with pytest.raises(ValueError, match='output_keys'):
        controller_lib.Controller(tf.distribute.get_strategy(), str(tmp_path), tf.Variable(0, dtype=tf.int64), {},
                                  output_keys=('loss',))


def test_dataset_function_input(tmp_path):
    """A dataset function (per-replica batches, tf.distribute.InputContext) trains like a dataset of batches."""
    def dataset_fn(context):
        return _data().unbatch().batch(context.get_per_replica_batch_size(_BATCH))

    by_function, model_a, _ = _controller(tmp_path / 'a', dataset=dataset_fn, checkpoint_train_iterator=False)
    by_function.train(5)
    by_dataset, model_b, _ = _controller(tmp_path / 'b')
    by_dataset.train(5)
    for a, b in zip(model_a.weights, model_b.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_logical_cpus_after_initialisation_is_a_clear_error():
    tf.config.list_logical_devices()  # initialises the devices of this process
    with pytest.raises(RuntimeError, match='before TensorFlow initialises its devices'):
        distribution_utils.create_strategy('', 0, num_cpu_replicas=2)


def test_one_device_strategy_by_default():
    strategy = distribution_utils.create_strategy('', 0)
    assert isinstance(strategy, tf.distribute.OneDeviceStrategy)
    assert strategy.num_replicas_in_sync == 1


def test_too_many_gpus_is_a_clear_error():
    available = len(tf.config.list_physical_devices('GPU'))
    with pytest.raises(ValueError, match=f'--num_gpus={available + 1}'):
        distribution_utils.create_strategy(None, available + 1)


def test_malformed_tf_config_is_named(monkeypatch):
    monkeypatch.setenv('TF_CONFIG', '{not json')
    with pytest.raises(ValueError, match='TF_CONFIG'):
        distribution_utils.create_strategy('', 0)


_MIRRORED_SCRIPT = textwrap.dedent('''
    import json, sys
    sys.path.insert(0, {repo!r})
    sys.path.insert(0, {tests!r})
    from trainer import distribution_utils
    strategy = distribution_utils.create_strategy('', 0, num_cpu_replicas=2)
    import tensorflow as tf
    import test_controller as t
    out = {{}}
    for name, s in (('mirrored', strategy), ('one_device', tf.distribute.OneDeviceStrategy('/cpu:0'))):
        controller, model, _ = t._controller({tmp!r} + '/' + name, strategy=s, steps_per_loop=3)
        losses = [controller.train(n)[t.common.TOTAL_LOSS] for n in (3, 6, 9)]
        out[name] = {{'replicas': s.num_replicas_in_sync, 'losses': losses,
                      'weights': [w.numpy().tolist() for w in model.weights]}}
    print('RESULT' + json.dumps(out))
''')


def test_mirrored_on_two_logical_cpus_matches_one_device(tmp_path):
    """Same global batch on 2 replicas (split on the host) and on 1 device: same losses and weights."""
    script = _MIRRORED_SCRIPT.format(repo=_REPO, tests=os.path.join(_REPO, 'tests'), tmp=str(tmp_path))
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    lines = [line for line in proc.stdout.splitlines() if line.startswith('RESULT')]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    out = json.loads(lines[0][len('RESULT'):])
    assert out['mirrored']['replicas'] == 2 and out['one_device']['replicas'] == 1
    np.testing.assert_allclose(out['mirrored']['losses'], out['one_device']['losses'], rtol=1e-5)
    for a, b in zip(out['mirrored']['weights'], out['one_device']['weights']):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('policy', ['mixed_float16', 'mixed_bfloat16'])
def test_mixed_precision_train_step(policy):
    """Float16 trains through the LossScaleOptimizer (loss scaled, gradients unscaled); bfloat16 directly."""
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = _model()
        optimizer = optimizer_builder.build_optimizer(_solver('sgd', lookahead=False), mixed_precision_policy=policy)

        def loss_fn(inputs):
            prediction = tf.cast(model(inputs['x']), tf.float32)
            return {common.TOTAL_LOSS: tf.reduce_sum(tf.square(prediction - inputs['y']), axis=-1)}

        step = tf.function(train_step.make_train_step_fn(loss_fn, model.trainable_variables, optimizer, _BATCH,
                                                         clip_norm=1.0))
        batch = next(iter(_data()))
        losses = [float(step(batch)[common.TOTAL_LOSS]) for _ in range(5)]
    finally:
        keras.mixed_precision.set_global_policy('float32')
    assert model.layers[0].compute_dtype != 'float32'
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_backbone_optimizer_gets_its_own_learning_rate():
    """With a zero-rate backbone optimizer the backbone variables stay fixed while the others move."""
    model = _model()
    backbone = model.layers[0].trainable_variables

    def loss_fn(inputs):
        return {common.TOTAL_LOSS: tf.reduce_sum(tf.square(model(inputs['x']) - inputs['y']), axis=-1)}

    step = train_step.make_train_step_fn(loss_fn, model.trainable_variables, keras.optimizers.SGD(0.01), _BATCH,
                                         backbone_optimizer=keras.optimizers.SGD(0.0), backbone_variables=backbone)
    before = [v.numpy().copy() for v in model.trainable_variables]
    step(next(iter(_data())))
    after = [v.numpy() for v in model.trainable_variables]
    assert all(np.array_equal(a, b) for a, b in zip(before[:2], after[:2]))
    assert not np.array_equal(before[2], after[2])


def test_train_step_output_is_global_batch_mean_with_weight_decay():
    model = _model()
    batch = next(iter(_data()))
    expected = float(tf.reduce_mean(tf.reduce_sum(tf.square(model(batch['x']) - batch['y']), -1)))
    decay = 1e-2 * sum(float(tf.reduce_sum(tf.square(v))) / 2 for v in model.trainable_variables
                       if v.path.endswith('kernel'))

    def loss_fn(inputs):
        return {common.TOTAL_LOSS: tf.reduce_sum(tf.square(model(inputs['x']) - inputs['y']), axis=-1)}

    step = train_step.make_train_step_fn(loss_fn, model.trainable_variables, keras.optimizers.SGD(0.0), _BATCH,
                                         weight_decay=1e-2)
    out = step(batch)
    assert float(out['weight_decay_loss']) == pytest.approx(decay, rel=1e-5)
    assert float(out[common.TOTAL_LOSS]) == pytest.approx(expected + decay, rel=1e-5)
