"""A small Orbit-like training/evaluation loop (Orbit itself ships only inside tf-models-official).

- `steps_per_loop` train steps run inside ONE tf.function call (a tf.range loop over a distributed iterator, as
  TPUs need); each step is `strategy.run(train_step_fn)` and its per-replica outputs are summed over replicas.
- A global step variable, a tf.train.Checkpoint of {global_step, checkpoint items, train iterator} and a
  CheckpointManager (every `checkpoint_interval` steps, newest `max_to_keep` kept) give exact resumption: weights,
  optimizer slots, the step and the position in the input pipeline.
- TensorBoard summaries under model_dir/train and model_dir/eval, a progress line with images/s and ETA.
- A non-finite loss stops training at the step it appears, without saving, naming the last good checkpoint.
- `evaluate_continuously` follows new checkpoints with tf.train.checkpoints_iterator.
- Several workers (MultiWorkerMirroredStrategy; trainer/cluster.py) follow tf.distribute's conventions: every worker
  restores the newest checkpoint of the shared model_dir and a collective check stops all of them if they restored
  different steps; every worker takes part in each save, but only the chief writes to model_dir (the others save
  into a temporary folder that is removed at once) and only the chief writes summaries.
- Under MultiWorkerMirroredStrategy and TPUStrategy, TensorFlow's PreemptionCheckpointHandler watches for a
  preemption notice (SIGTERM): all workers save a checkpoint at the same step, then exit with the platform's
  restart code (42; 143 on GCE GPU VMs); the restarted run resumes from it. TensorFlow does not act on notices on
  Cloud TPU VMs and GCE CPU VMs (it logs a warning); there a restart resumes from the newest periodic checkpoint.

Tasks plug in through `train_step_fn` (see trainer/train_step.py) and an `Evaluator` (reset/update/result).
"""

import datetime
import math
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Mapping, Optional, Protocol, Sequence, Union

import tensorflow as tf
from absl import logging

from deeplab_axial import common
from trainer import cluster
from trainer import summaries

DatasetOrFn = Union[tf.data.Dataset, Callable[[tf.distribute.InputContext], tf.data.Dataset]]


class Evaluator(Protocol):
    """What the controller needs from a task's evaluation."""

    def reset(self) -> None:
        """Clears the metric state before a pass over the eval set."""

    def update(self, inputs: Dict[str, tf.Tensor]) -> None:
        """Runs the model on one batch and accumulates metrics (the evaluator picks tf.function/devices)."""

    def result(self) -> Dict[str, float]:
        """Metrics of the pass, e.g. {'evaluation/pq/PQ': 0.61}."""


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/Inf loss; the message names the step and the last good checkpoint."""


class RestoreMismatchError(RuntimeError):
    """The workers of one run restored different checkpoints (model_dir is not one shared folder)."""


class _AlreadyRestored(tf.train.CheckpointManager):
    """The controller's checkpoint for PreemptionCheckpointHandler, which restores in its constructor: the
    controller has restored already (and checked that the workers agree), and the handler saves through `save_fn`."""

    def restore_or_initialize(self):
        return self.latest_checkpoint


class Controller:
    """Runs training, evaluation and continuous evaluation for any task.

    Args:
      strategy: the tf.distribute strategy; the model, optimizer and global step were built under its scope.
      model_dir: checkpoints go here, summaries to model_dir/train and model_dir/eval; with several workers, one
        folder that all of them reach (a shared file system or gs://), written by the chief only.
      global_step: int64 scalar tf.Variable counting train steps.
      checkpoint_items: trackables to checkpoint besides the step, e.g. {'encoder': ..., 'optimizer': ...}
        (common.CKPT_* names).
      train_step_fn: per-replica `step(inputs) -> {name: scalar}`, values that sum over replicas to global means
        (trainer/train_step.make_train_step_fn); None for evaluation-only controllers.
      train_dataset: a dataset of GLOBAL batches, or a function of tf.distribute.InputContext returning per-replica
        batches; repeated (infinite) for training.
      output_keys: names returned by train_step_fn that are logged; must include common.TOTAL_LOSS.
      evaluator: a task Evaluator, or None.
      eval_dataset: finite dataset the evaluator consumes batch by batch.
      steps_per_loop: train steps per tf.function call.
      checkpoint_interval: save every this many steps (and at the end of `train`).
      summary_interval: write train summaries every this many steps.
      max_to_keep: checkpoints kept.
      global_batch_size: examples per step, for images/s.
      learning_rate_fn: returns the current learning rate (logged), e.g. lambda: optimizer.learning_rate.
      checkpoint_train_iterator: also checkpoint the input pipeline position. Possible for a `train_dataset` of
        global batches under OneDevice/MirroredStrategy (not for datasets using tf.py_function: pass False).
      init_fn: called when model_dir has no checkpoint yet (e.g. load an ImageNet-pretrained backbone).
      summary_fn: called inside the train summary writer at summary steps with the step, for extra summaries
        (images).
    """

    def __init__(self, strategy: tf.distribute.Strategy, model_dir: str, global_step: tf.Variable,
                 checkpoint_items: Mapping[str, Any], *, train_step_fn: Optional[Callable] = None,
                 train_dataset: Optional[DatasetOrFn] = None, output_keys: Sequence[str] = (common.TOTAL_LOSS,),
                 evaluator: Optional[Evaluator] = None, eval_dataset: Optional[tf.data.Dataset] = None,
                 steps_per_loop: int = 1000, checkpoint_interval: int = 1000, summary_interval: int = 1000,
                 max_to_keep: int = 5, global_batch_size: Optional[int] = None,
                 learning_rate_fn: Optional[Callable[[], Any]] = None, checkpoint_train_iterator: bool = True,
                 init_fn: Optional[Callable[[], None]] = None, summary_fn: Optional[Callable[[int], None]] = None):
        for name, value in (('steps_per_loop', steps_per_loop), ('checkpoint_interval', checkpoint_interval),
                            ('summary_interval', summary_interval), ('max_to_keep', max_to_keep)):
            if value <= 0:
                raise ValueError(f'Controller: `{name}` must be positive. Received: {value}')
        if (train_step_fn is None) != (train_dataset is None):
            raise ValueError('Controller: `train_step_fn` and `train_dataset` go together')
        if common.TOTAL_LOSS not in output_keys:
            raise ValueError(f'Controller: `output_keys` must include {common.TOTAL_LOSS!r}. Received: {output_keys}')
        self._strategy = strategy
        self._model_dir = model_dir
        self._global_step = global_step
        self._train_step_fn = train_step_fn
        self._output_keys = tuple(output_keys)
        self._evaluator = evaluator
        self._eval_dataset = eval_dataset
        self._steps_per_loop = steps_per_loop
        self._checkpoint_interval = checkpoint_interval
        self._summary_interval = summary_interval
        self._global_batch_size = global_batch_size
        self._learning_rate_fn = learning_rate_fn
        self._summary_fn = summary_fn

        items = dict(checkpoint_items)
        items[common.CKPT_GLOBAL_STEP] = global_step
        self._train_iterator = None
        # tf.data iterators are checkpointable, distributed iterators are not. On one host (OneDevice, Mirrored)
        # the loop therefore reads global batches from a plain iterator and splits them over the replicas itself,
        # so that the input position is part of the checkpoint; elsewhere (TPU, multi-worker) it uses a
        # distributed iterator and a resumed run restarts the input pipeline.
        self._split_on_host = (checkpoint_train_iterator and isinstance(train_dataset, tf.data.Dataset) and
                               isinstance(strategy, (tf.distribute.OneDeviceStrategy, tf.distribute.MirroredStrategy)))
        if train_dataset is not None:
            if self._split_on_host:
                with tf.device('/cpu:0'):
                    self._train_iterator = iter(train_dataset)
                items[common.CKPT_TRAIN_ITERATOR] = self._train_iterator
            else:
                if checkpoint_train_iterator:
                    logging.warning('The input pipeline position is not checkpointed (%s with a %s); a resumed '
                                    'run restarts the training data.', type(strategy).__name__,
                                    'dataset' if isinstance(train_dataset, tf.data.Dataset) else 'dataset function')
                if isinstance(train_dataset, tf.data.Dataset):
                    distributed = strategy.experimental_distribute_dataset(train_dataset)
                else:
                    distributed = strategy.distribute_datasets_from_function(train_dataset)
                self._train_iterator = iter(distributed)
            self._train_loop = tf.function(self._train_loop_fn)
        self._checkpoint = tf.train.Checkpoint(**items)
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, directory=model_dir, max_to_keep=max_to_keep, step_counter=global_step,
            init_fn=init_fn)
        self._worker = cluster.worker_info(strategy)
        if self._worker.is_chief:
            self._train_writer = tf.summary.create_file_writer(os.path.join(model_dir, 'train'))
            self._eval_writer = tf.summary.create_file_writer(os.path.join(model_dir, 'eval'))
        else:
            self._train_writer = self._eval_writer = tf.summary.create_noop_writer()
        restored = self._manager.latest_checkpoint
        if restored:
            status = self._checkpoint.restore(restored)
            if train_dataset is None:
                status.expect_partial()  # Evaluation reads the model, not the optimizer.
            logging.info('Restored %s at step %d', restored, self.global_step)
        else:
            self._manager.restore_or_initialize()  # Runs init_fn.
        self._check_workers_restored_alike(restored)
        self._preemption = None
        if train_dataset is not None and isinstance(strategy, (tf.distribute.MultiWorkerMirroredStrategy,
                                                               tf.distribute.TPUStrategy)):
            self._preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
                strategy.cluster_resolver, _AlreadyRestored(self._checkpoint, model_dir, max_to_keep=None),
                termination_config=tf.distribute.experimental.TerminationConfig(
                    save_fn=lambda: self._save(self.global_step)))

    def _check_workers_restored_alike(self, restored: Optional[str]) -> None:
        """All workers must have restored the same step (a collective; one worker has nothing to compare)."""
        if self._worker.num_workers == 1:
            return
        mine = (self.global_step, restored or 'no checkpoint')
        everyone = cluster.gather_objects(self._strategy, self._worker, mine)
        if len(set(step for step, _ in everyone)) > 1:
            found = '; '.join(f'worker {i}: step {step} ({path})' for i, (step, path) in enumerate(everyone))
            raise RestoreMismatchError(
                f'The workers restored different checkpoints from --model_dir ({found}). Every worker must be given '
                'the same model_dir on a file system they all reach (a shared file system or gs://), where the '
                'chief writes the checkpoints.')

    def _save(self, step: int) -> None:
        """Saves the checkpoint of `step`: every worker takes part, only the chief's copy lands in model_dir."""
        if self._worker.is_chief:
            self._manager.save(checkpoint_number=step)
            return
        # tf.distribute's multi-worker checkpointing: the other workers write to a folder of their own and delete it.
        scratch = tempfile.mkdtemp(prefix=f'deeplab_axial_worker{self._worker.index}_')
        try:
            tf.train.CheckpointManager(self._checkpoint, scratch, max_to_keep=1).save(checkpoint_number=step)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @property
    def global_step(self) -> int:
        return int(self._global_step.numpy())

    @property
    def checkpoint_manager(self) -> tf.train.CheckpointManager:
        return self._manager

    def _split_batch(self, batch):
        """Splits a global batch into per-replica batches (host-iterator mode)."""
        n = self._strategy.num_replicas_in_sync
        if n == 1:
            return batch

        def value_fn(context):
            return tf.nest.map_structure(lambda t: tf.split(t, n)[context.replica_id_in_sync_group], batch)

        return self._strategy.experimental_distribute_values_from_function(value_fn)

    def _train_loop_fn(self, iterator, num_steps):
        """Runs up to num_steps steps; stops early after a step with a non-finite output."""
        zeros = {k: tf.constant(0.0) for k in self._output_keys}
        totals, last = dict(zeros), dict(zeros)
        count = tf.constant(0.0)
        for _ in tf.range(num_steps):
            inputs = next(iterator)
            if self._split_on_host:
                inputs = self._split_batch(inputs)
            per_replica = self._strategy.run(self._train_step_fn, args=(inputs,))
            missing = set(self._output_keys) - set(per_replica)
            if missing:
                raise KeyError(f'train_step_fn did not return {sorted(missing)}; it returned {sorted(per_replica)}')
            last = {k: self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[k], axis=None)
                    for k in self._output_keys}
            totals = {k: totals[k] + last[k] for k in self._output_keys}
            count += 1.0
            with tf.control_dependencies(list(last.values())):
                self._global_step.assign_add(1)
            if not tf.reduce_all(tf.stack([tf.math.is_finite(v) for v in last.values()])):
                break
        return {k: v / tf.maximum(count, 1.0) for k, v in totals.items()}, last

    def _next_stop(self, step: int, end: int, intervals: Sequence[int]) -> int:
        """The next step at which the loop must return to Python: a loop, checkpoint, summary or eval boundary."""
        stop = min(end, step + self._steps_per_loop)
        for interval in intervals:
            stop = min(stop, (step // interval + 1) * interval)
        return stop

    def _log_progress(self, step: int, end: int, losses: Dict[str, float], seconds: float, steps: int,
                      start_time: float, start_step: int) -> None:
        rate = steps / max(seconds, 1e-9)
        done = step - start_step
        eta = (time.time() - start_time) / max(done, 1) * (end - step)
        parts = [f'step {step}/{end} ({100.0 * step / end:.0f}%)',
                 ' '.join(f'{k} {v:.4g}' for k, v in losses.items())]
        if self._learning_rate_fn is not None:
            parts.append(f'lr {float(self._learning_rate_fn()):.3g}')
        if self._global_batch_size:
            parts.append(f'{rate * self._global_batch_size:.1f} images/s')
        parts.append(f'{rate:.2f} steps/s, ETA {datetime.timedelta(seconds=int(eta))}')
        logging.info(' | '.join(parts))

    def _write_train_summaries(self, step: int, losses: Dict[str, float], steps_per_second: float) -> None:
        with self._train_writer.as_default(step=step):
            for k, v in losses.items():
                summaries.scalar(f'losses/{k}', v, step)
            if self._learning_rate_fn is not None:
                summaries.scalar('learning_rate', float(self._learning_rate_fn()), step)
            summaries.scalar('steps_per_second', steps_per_second, step)
            if self._global_batch_size:
                summaries.scalar('images_per_second', steps_per_second * self._global_batch_size, step)
            if self._summary_fn is not None:
                self._summary_fn(step)
        self._train_writer.flush()

    def _non_finite(self, step: int, last: Dict[str, float]) -> NonFiniteLossError:
        bad = {k: v for k, v in last.items() if not math.isfinite(v)}
        latest = self._manager.latest_checkpoint or 'none (no checkpoint was saved yet)'
        return NonFiniteLossError(
            f'Non-finite training loss at step {step}: {bad}. Training stopped without saving this state. '
            f'The last good checkpoint is {latest}. Try a lower base_learning_rate, use_gradient_clipping, more '
            'warmup_steps, or mixed_bfloat16 instead of mixed_float16.')

    def train(self, steps: int, eval_interval: Optional[int] = None, eval_steps: int = -1) -> Dict[str, float]:
        """Trains until the global step reaches `steps` (resuming from the restored step).

        Args:
          steps: the final global step.
          eval_interval: if set, evaluate every this many steps (and at the end).
          eval_steps: batches per evaluation; -1 = the whole eval set.

        Returns:
          The mean outputs of the last loop.

        Raises:
          NonFiniteLossError: a loss became NaN/Inf.
        """
        if self._train_iterator is None:
            raise ValueError('Controller.train needs `train_step_fn` and `train_dataset`')
        intervals = [self._checkpoint_interval, self._summary_interval] + ([eval_interval] if eval_interval else [])
        if isinstance(self._strategy, tf.distribute.TPUStrategy):
            with self._preemption.watch_preemption_scope():
                return self._train(steps, intervals, eval_interval, eval_steps)
        return self._train(steps, intervals, eval_interval, eval_steps)

    def _run_loop(self, num_steps: int):
        """One tf.function call of `num_steps` steps; through the preemption handler where there is one."""
        args = (self._train_iterator, tf.constant(num_steps, tf.int32))
        if self._preemption is not None:
            return self._preemption.run(self._train_loop, *args)
        return self._train_loop(*args)

    def _train(self, steps: int, intervals: Sequence[int], eval_interval: Optional[int],
               eval_steps: int) -> Dict[str, float]:
        step = start_step = self.global_step
        start_time = time.time()
        means: Dict[str, float] = {}
        while step < steps:
            stop = self._next_stop(step, steps, intervals)
            t0 = time.time()
            try:
                mean_out, last_out = self._run_loop(stop - step)
            except tf.errors.OutOfRangeError:
                raise ValueError(f'The training dataset ran out of batches after step {self.global_step}; it must '
                                 'repeat indefinitely (dataset.repeat()).') from None
            mean_out = {k: float(v) for k, v in mean_out.items()}
            last_out = {k: float(v) for k, v in last_out.items()}
            seconds = time.time() - t0
            ran, step = self.global_step - step, self.global_step
            if not all(math.isfinite(v) for v in last_out.values()):
                raise self._non_finite(step, last_out)
            means = mean_out
            self._log_progress(step, steps, means, seconds, ran, start_time, start_step)
            if step % self._summary_interval == 0 or step == steps:
                self._write_train_summaries(step, means, ran / max(seconds, 1e-9))
            if step % self._checkpoint_interval == 0 or step == steps:
                self._save(step)
            if eval_interval and (step % eval_interval == 0 or step == steps):
                self.evaluate(eval_steps)
        return means

    def evaluate(self, steps: int = -1) -> Dict[str, float]:
        """One pass of the evaluator over `steps` batches (-1 = all); writes eval summaries at the global step."""
        if self._evaluator is None or self._eval_dataset is None:
            raise ValueError('Controller.evaluate needs `evaluator` and `eval_dataset`')
        dataset = self._eval_dataset.take(steps) if steps > 0 else self._eval_dataset
        self._evaluator.reset()
        t0 = time.time()
        batches = 0
        for batch in dataset:
            self._evaluator.update(batch)
            batches += 1
        results = {k: float(v) for k, v in self._evaluator.result().items()}
        step = self.global_step
        with self._eval_writer.as_default(step=step):
            for k, v in results.items():
                summaries.scalar(k, v, step)
        self._eval_writer.flush()
        logging.info('eval at step %d (%d batches, %.1fs): %s', step, batches, time.time() - t0,
                     ', '.join(f'{k} {v:.4g}' for k, v in results.items()))
        return results

    def evaluate_continuously(self, steps: int = -1, timeout: Optional[float] = None, final_step: Optional[int] = None,
                              min_interval_secs: float = 0) -> Dict[str, float]:
        """Evaluates each new checkpoint in model_dir until `timeout` seconds pass without one (None = forever)
        or a checkpoint at `final_step` or later was evaluated. Returns the last results.

        With several workers the chief watches model_dir and hands each checkpoint (or the end) to the others.
        """
        results: Dict[str, float] = {}
        paths = tf.train.checkpoints_iterator(self._model_dir, min_interval_secs=min_interval_secs, timeout=timeout)
        while True:
            path = next(paths, None) if self._worker.is_chief else None
            path = cluster.gather_objects(self._strategy, self._worker, path)[0]
            if path is None:
                return results
            self._checkpoint.restore(path).expect_partial()
            logging.info('Evaluating %s (step %d)', path, self.global_step)
            results = self.evaluate(steps)
            if final_step is not None and self.global_step >= final_step:
                return results
