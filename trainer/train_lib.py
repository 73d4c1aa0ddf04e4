"""Wires a config to the trainer core: model, loss, optimizer, datasets, evaluator and the Controller.

    config, experiment_dir, strategy = train.prepare_experiment(...)
    run_experiment(config, 'train_and_eval', experiment_dir, strategy)

Modes (deeplab2's):
- train: trains to solver_options.training_number_of_steps, resuming from the newest checkpoint in experiment_dir
  (weights, optimizer, step, input position), else initialising from model_options.initial_checkpoint.
- train_and_eval: the same, evaluating every evaluator_options.eval_interval steps and at the end.
- eval: evaluates the newest checkpoint once (an error if there is none).
- continuous_eval: evaluates every new checkpoint until one at training_number_of_steps was evaluated, or
  continuous_eval_timeout seconds pass without a new one (-1 = wait forever).

The model is built under strategy.scope() at the train crop size (eval modes: the eval crop size); evaluation
calls it with training=False, so drop path and batch-norm updates are off. The task (panoptic or classification)
comes from the backbone's registry entry (trainer/panoptic_task.py, trainer/classification_task.py).

Training modes own experiment_dir while they run (trainer/model_dir.py): the chief takes its lock (a second trainer
is refused), removes checkpoint temporaries an interrupted run left, and saves the resolved config as
config.textproto. With several workers, each evaluates its share of the eval records (trainer/sharded_eval.py).
"""

import contextlib
import dataclasses
from typing import Dict, Optional

import keras
import tensorflow as tf
from absl import logging

from deeplab_axial import common
from deeplab_axial import config_utils
from deeplab_axial.data import input_pipeline
from deeplab_axial.model import builder
from deeplab_axial.model import registry
from deeplab_axial.protos import config_pb2
from trainer import checkpoint_utils
from trainer import classification_task
from trainer import config_checks
from trainer import controller as controller_lib
from trainer import cluster
from trainer import data_options
from trainer import experiment_checks
from trainer import model_dir as model_dir_lib
from trainer import optimizer_builder
from trainer import panoptic_task
from trainer import train_step
from trainer.task import Task

_TASKS: Dict[str, Task] = {common.TASK_PANOPTIC: panoptic_task, common.TASK_CLASSIFICATION: classification_task}


def _host_datasets(strategy: tf.distribute.Strategy) -> bool:
    """One host (OneDevice, Mirrored): the controller reads global batches and splits them (exact resume)."""
    return isinstance(strategy, (tf.distribute.OneDeviceStrategy, tf.distribute.MirroredStrategy))


def _train_dataset(options: input_pipeline.DataOptions, strategy: tf.distribute.Strategy):
    if _host_datasets(strategy):
        return input_pipeline.build_dataset(options)
    # TPU and multi-worker: each input pipeline reads its shard with its per-replica batch size.
    return lambda context: input_pipeline.build_dataset(options, context)


def _eval_dataset(options: input_pipeline.DataOptions, strategy: tf.distribute.Strategy) -> tf.data.Dataset:
    """The eval batches of this worker: all of them, or with W workers every W-th record in batches of
    ceil(batch_size / W) (the evaluator splits them over the local replicas)."""
    worker = cluster.worker_info(strategy)
    if worker.num_workers == 1:
        return input_pipeline.build_dataset(options)
    per_worker = -(-options.batch_size // worker.num_workers)
    context = tf.distribute.InputContext(num_input_pipelines=worker.num_workers, input_pipeline_id=worker.index,
                                         num_replicas_in_sync=worker.num_workers)
    return input_pipeline.build_dataset(dataclasses.replace(options, batch_size=per_worker * worker.num_workers),
                                        context)


def _config_seed(config: config_pb2.ExperimentOptions, seed: Optional[int]) -> Optional[int]:
    if seed is not None:
        return seed
    return config.trainer_options.seed if config.trainer_options.HasField('seed') else None


def _own_experiment_dir(config: config_pb2.ExperimentOptions, experiment_dir: str, seed: Optional[int],
                        worker: cluster.WorkerInfo, stack: contextlib.ExitStack) -> None:
    """The chief's claim on experiment_dir for training: the lock (held until `stack` closes), the removal of an
    interrupted run's checkpoint temporaries, and the resolved config (seed included) as config.textproto."""
    if not worker.is_chief:
        return
    tf.io.gfile.makedirs(experiment_dir)
    stack.enter_context(model_dir_lib.TrainingLock(experiment_dir))
    model_dir_lib.remove_checkpoint_temporaries(experiment_dir)
    resolved = config_pb2.ExperimentOptions()
    resolved.CopyFrom(config)
    if seed is not None:
        resolved.trainer_options.seed = seed
    model_dir_lib.write_config_copy(resolved, experiment_dir)


def run_experiment(config: config_pb2.ExperimentOptions, mode: str, experiment_dir: str,
                   strategy: tf.distribute.Strategy, *, seed: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """Runs one mode of an experiment (see the module docstring).

    Args:
      config: a loaded ExperimentOptions (train.prepare_experiment set its mixed-precision policy).
      mode: 'train', 'eval', 'train_and_eval' or 'continuous_eval'.
      experiment_dir: checkpoints, summaries, eval_results.json and predictions go here.
      strategy: from trainer.distribution_utils.create_strategy.
      seed: seeds the weights' initialisation, data shuffling and augmentation; None = trainer_options.seed if
        set, else random. A seeded run on one device is reproducible bit for bit, also across a kill and resume.

    Returns:
      {'train': mean outputs of the last training loop} and/or {'eval': metrics of the last evaluation}.

    Raises:
      config_utils.ConfigError: an invalid config.
      controller.NonFiniteLossError: the loss became NaN/Inf (the message names the last good checkpoint).
      controller.RestoreMismatchError: the workers of a multi-worker run restored different checkpoints.
      model_dir.ModelDirLockedError: another trainer is training into experiment_dir.
      experiment_checks.ExperimentError: a data source, folder or checkpoint that cannot be used (found before the
        model is built).
      ValueError: an unknown mode.
    """
    if mode not in common.MODES:
        raise ValueError(f'mode must be one of {common.MODES}. Received: {mode!r}')
    descriptors = config_checks.validate(config, num_replicas=strategy.num_replicas_in_sync)
    for needed, key, field in ((mode in common.TRAIN_MODES, 'train', 'train_dataset_options'),
                               (mode != common.MODE_TRAIN, 'eval', 'eval_dataset_options')):
        if needed and key not in descriptors:
            raise config_utils.ConfigError(f'--mode={mode} needs {field}.dataset')
    experiment_checks.check_experiment(config, mode, experiment_dir)
    with contextlib.ExitStack() as stack:
        if mode in common.TRAIN_MODES:
            seed = _config_seed(config, seed)
            _own_experiment_dir(config, experiment_dir, seed, cluster.worker_info(strategy), stack)
        results = _run(config, descriptors, mode, experiment_dir, strategy, seed)
        if mode in common.TRAIN_MODES and cluster.worker_info(strategy).is_chief:
            model_dir_lib.remove_checkpoint_temporaries(experiment_dir)
        return results


def _run(config: config_pb2.ExperimentOptions, descriptors: dict, mode: str, experiment_dir: str,
         strategy: tf.distribute.Strategy, seed: Optional[int]) -> Dict[str, Dict[str, float]]:
    """run_experiment, inside the chief's claim on experiment_dir."""
    training = mode in common.TRAIN_MODES
    evaluating = mode != common.MODE_TRAIN
    descriptor = descriptors['train' if training else 'eval']
    task = _TASKS[registry.model_task(config.model_options.backbone.name)]
    solver = config.trainer_options.solver_options
    train_crop = tuple(config.train_dataset_options.crop_size)
    eval_crop = tuple(config.eval_dataset_options.crop_size)
    if seed is not None:
        keras.utils.set_random_seed(seed)

    with strategy.scope():
        model = builder.build_model(config, descriptor)
        model.build((None, *(train_crop if training else eval_crop), 3))
        global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name='global_step')
        items = dict(model.checkpoint_items)
        train_kwargs = {}
        if training:
            train_kwargs = _training_setup(config, descriptor, strategy, model, task, items, seed)
    logging.info('Model %s: %d parameters', config.model_options.backbone.name, model.count_params())

    eval_kwargs, evaluator = {}, None
    if evaluating:
        eval_options = data_options.to_data_options(config.eval_dataset_options, descriptors['eval'],
                                                    is_training=False)
        evaluator = task.build_evaluator(config, descriptors['eval'], strategy, model, eval_crop, experiment_dir,
                                         global_step)
        eval_kwargs = dict(evaluator=evaluator, eval_dataset=_eval_dataset(eval_options, strategy))
    trainer_options = config.trainer_options
    controller = controller_lib.Controller(
        strategy, experiment_dir, global_step, items, steps_per_loop=trainer_options.steps_per_loop,
        checkpoint_interval=trainer_options.save_checkpoints_steps,
        summary_interval=trainer_options.save_summaries_steps,
        max_to_keep=trainer_options.num_checkpoints_to_keep, **train_kwargs, **eval_kwargs)

    evaluator_options = config.evaluator_options
    eval_steps = evaluator_options.eval_steps
    final_step = solver.training_number_of_steps
    if mode == common.MODE_TRAIN:
        return {'train': controller.train(final_step)}
    if mode == common.MODE_TRAIN_AND_EVAL:
        means = controller.train(final_step, eval_interval=evaluator_options.eval_interval, eval_steps=eval_steps)
        if not means:  # Already trained to final_step: nothing ran, so evaluate the final checkpoint here.
            controller.evaluate(eval_steps)
        return {'train': means, 'eval': evaluator.last_results}
    if mode == common.MODE_EVAL:
        return {'eval': controller.evaluate(eval_steps)}
    timeout = evaluator_options.continuous_eval_timeout
    return {'eval': controller.evaluate_continuously(eval_steps, timeout=timeout if timeout > 0 else None,
                                                     final_step=final_step)}


def _training_setup(config: config_pb2.ExperimentOptions, descriptor, strategy: tf.distribute.Strategy,
                    model: keras.Model, task: Task, items: dict, seed: Optional[int]) -> dict:
    """Optimizer(s), train step, train dataset and init_fn (inside strategy.scope()); adds optimizers to items."""
    solver = config.trainer_options.solver_options
    policy = config.model_options.mixed_precision_policy or 'float32'
    optimizer = optimizer_builder.build_optimizer(solver, mixed_precision_policy=policy)
    items[common.CKPT_OPTIMIZER] = optimizer
    step_kwargs = {}
    if solver.backbone_learning_rate_multiplier != 1.0:
        backbone_optimizer = optimizer_builder.build_optimizer(
            solver, optimizer_builder.build_learning_rate_schedule(solver, solver.backbone_learning_rate_multiplier),
            mixed_precision_policy=policy)
        items[common.CKPT_BACKBONE_OPTIMIZER] = backbone_optimizer
        step_kwargs = dict(backbone_optimizer=backbone_optimizer,
                           backbone_variables=model.encoder.trainable_variables)
    global_batch_size = config.train_dataset_options.batch_size
    step_fn = train_step.make_train_step_fn(
        task.make_loss_fn(config, descriptor, model), model.trainable_variables, optimizer, global_batch_size,
        weight_decay=solver.weight_decay, clip_norm=solver.clip_gradient_norm if solver.use_gradient_clipping else None,
        **step_kwargs)
    options = data_options.to_data_options(config.train_dataset_options, descriptor, is_training=True, seed=seed)
    return dict(train_step_fn=step_fn, train_dataset=_train_dataset(options, strategy), output_keys=task.OUTPUT_KEYS,
                global_batch_size=global_batch_size, learning_rate_fn=lambda: optimizer.learning_rate,
                init_fn=checkpoint_utils.make_init_fn(config.model_options, model.checkpoint_items))
