"""Learning-rate schedules, optimizers, weight decay and mixed precision from `SolverOptions`.

Follows deeplab2 (`trainer/trainer.py`, `trainer/trainer_utils.py`, `model/deeplab.py`) on Keras 3:
- schedules: 'poly' (PolynomialDecay over training_number_of_steps) or 'cosine' (CosineDecay to 0), optionally
  wrapped in a linear warm-up that *replaces* the first warmup_steps of the decay (lr = step / warmup_steps * base);
- optimizers: 'adam', 'adamw' (decoupled decay on kernels only), 'sgd' (momentum, optional Nesterov), and 'radam'
  (Liu et al., 2020), any of them optionally wrapped in Lookahead (Zhang et al., 2019) - the pair Axial-DeepLab
  trains with. Keras 3 ships neither RAdam nor Lookahead, so both are written here;
- weight decay: deeplab2 puts `l2(weight_decay / 2)` regularisers on convolution kernels, i.e. adds
  weight_decay * sum(w^2) / 2 = weight_decay * tf.nn.l2_loss(w) to the loss (the halving matches TF1's
  `tf.nn.l2_loss`). `weight_decay_loss` computes exactly that over every variable whose name ends in 'kernel'
  (conv, depthwise, pointwise and dense kernels; never biases, BN parameters or positional embeddings), so the
  models need no regularisers;
- gradient clipping by global norm (`clip_gradients`).
"""

import re
from typing import List, Sequence, Tuple

import keras
import tensorflow as tf
from keras import ops

from deeplab_axial.protos import trainer_pb2

_KERNEL_PATTERN = re.compile(r'kernel(:\d+)?$')
# The values this module builds for SolverOptions.optimizer, SolverOptions.learning_policy and
# ModelOptions.mixed_precision_policy; `config_checks.validate` checks configs against them.
OPTIMIZERS = ('adam', 'adamw', 'sgd', 'radam')
LEARNING_POLICIES = ('poly', 'cosine')
PRECISION_POLICIES = ('float32', 'mixed_bfloat16', 'mixed_float16')


@keras.saving.register_keras_serializable(package='deeplab_axial')
class LinearWarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `initial_learning_rate`, then `decay_schedule` (evaluated at the same step).

    As deeplab2's WarmUp: lr(step) = step / warmup_steps * initial_learning_rate while step < warmup_steps.
    """

    def __init__(self, initial_learning_rate: float, decay_schedule, warmup_steps: int, name: str = 'LinearWarmUp'):
        super().__init__()
        if warmup_steps <= 0:
            raise ValueError(f'LinearWarmUp: `warmup_steps` must be positive. Received: {warmup_steps}')
        self.initial_learning_rate = initial_learning_rate
        self.decay_schedule = decay_schedule
        self.warmup_steps = warmup_steps
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, 'float32')
        warmup = self.initial_learning_rate * step / float(self.warmup_steps)
        return ops.where(step < float(self.warmup_steps), warmup,
                         ops.cast(self.decay_schedule(step), 'float32'))

    def get_config(self):
        return {'initial_learning_rate': self.initial_learning_rate,
                'decay_schedule': keras.saving.serialize_keras_object(self.decay_schedule),
                'warmup_steps': self.warmup_steps, 'name': self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config['decay_schedule'] = keras.saving.deserialize_keras_object(config['decay_schedule'])
        return cls(**config)


@keras.saving.register_keras_serializable(package='deeplab_axial')
class RAdam(keras.optimizers.Optimizer):
    """Rectified Adam (Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020).

    With t = step + 1, m and v Adam's moments, m_hat = m / (1 - beta_1^t), rho_inf = 2 / (1 - beta_2) - 1 and
    rho_t = rho_inf - 2 t beta_2^t / (1 - beta_2^t):
      rho_t >= sma_threshold: w -= lr * r_t * m_hat / (sqrt(v / (1 - beta_2^t)) + epsilon), with
        r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t));
      otherwise (the variance of the adaptive rate is intractable): w -= lr * m_hat (momentum SGD).
    The threshold defaults to 5, as TensorFlow Addons' and PyTorch's RAdam (the paper writes rho_t > 4).
    """

    def __init__(self, learning_rate=1e-3, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-7,
                 sma_threshold: float = 5.0, name: str = 'radam', **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.sma_threshold = sma_threshold

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(var_list, ['momentum', 'velocity'])

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        t = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        beta_1_power = ops.power(beta_1, t)
        beta_2_power = ops.power(beta_2, t)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(m, beta_1 * m + (1.0 - beta_1) * gradient)
        self.assign(v, beta_2 * v + (1.0 - beta_2) * ops.square(gradient))
        m_hat = m / (1.0 - beta_1_power)
        rho_inf = 2.0 / (1.0 - beta_2) - 1.0
        rho_t = rho_inf - 2.0 * t * beta_2_power / (1.0 - beta_2_power)
        rect = ops.sqrt(ops.maximum((rho_t - 4.0) * (rho_t - 2.0) * rho_inf, 0.0)
                        / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
        adaptive = rect * m_hat / (ops.sqrt(v / (1.0 - beta_2_power)) + ops.cast(self.epsilon, dtype))
        self.assign_sub(variable, lr * ops.where(rho_t >= self.sma_threshold, adaptive, m_hat))

    def get_config(self):
        config = super().get_config()
        config.update({'beta_1': self.beta_1, 'beta_2': self.beta_2, 'epsilon': self.epsilon,
                       'sma_threshold': self.sma_threshold})
        return config


@keras.saving.register_keras_serializable(package='deeplab_axial')
class Lookahead(keras.optimizers.Optimizer):
    """Lookahead (Zhang et al., "Lookahead Optimizer: k steps forward, 1 step back", NeurIPS 2019).

    The wrapped optimizer updates the (fast) weights every step. Slow weights start at the initial weights; after
    every `sync_period`-th step they move `slow_step_size` of the way to the fast weights,
    slow += slow_step_size * (fast - slow), and the fast weights are reset to them.

    The wrapper drives the inner optimizer's `update_step` per variable (so it works under tf.distribute exactly
    like a plain Keras optimizer) and shares its step counter and learning rate with it. Clipping and decoupled
    weight decay belong to the wrapper's own arguments; those of the inner optimizer are not applied.
    """

    def __init__(self, optimizer: keras.optimizers.Optimizer, sync_period: int = 6, slow_step_size: float = 0.5,
                 name: str = 'lookahead', **kwargs):
        if sync_period < 1:
            raise ValueError(f'Lookahead: `sync_period` must be >= 1. Received: {sync_period}')
        if not 0.0 < slow_step_size <= 1.0:
            raise ValueError(f'Lookahead: `slow_step_size` must be in (0, 1]. Received: {slow_step_size}')
        learning_rate = optimizer._learning_rate
        if isinstance(learning_rate, keras.Variable):
            learning_rate = float(learning_rate.numpy())
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.optimizer = optimizer
        # One step counter for both, so that the inner optimizer's bias corrections and schedule see the steps.
        # (Its own counter stays tracked, unused: untracking it would make its variable list unsaveable.)
        optimizer._iterations = self._iterations
        self.sync_period = sync_period
        self.slow_step_size = slow_step_size

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self.optimizer.build(var_list)
        self._slow_weights = self.add_optimizer_variables(var_list, 'slow')

    @property
    def variables(self):
        """Own variables (step, slow weights) then the inner optimizer's, each once (Keras saving uses this)."""
        own = self._variables[:]
        ids = {id(v) for v in own}
        return own + [v for v in self.optimizer.variables if id(v) not in ids]

    def update_step(self, gradient, variable, learning_rate):
        slow = self._slow_weights[self._get_variable_index(variable)]
        # Slow weights start at the weights before the first update.
        self.assign(slow, ops.where(self.iterations == 0, variable, slow))
        self.optimizer.update_step(gradient, variable, learning_rate)
        sync = ops.equal((self.iterations + 1) % self.sync_period, 0)
        new_slow = slow + ops.cast(self.slow_step_size, variable.dtype) * (variable - slow)
        self.assign(slow, ops.where(sync, new_slow, slow))
        self.assign(variable, ops.where(sync, new_slow, variable))

    def get_config(self):
        config = super().get_config()
        config.pop('learning_rate')
        config.update({'optimizer': keras.saving.serialize_keras_object(self.optimizer),
                       'sync_period': self.sync_period, 'slow_step_size': self.slow_step_size})
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config['optimizer'] = keras.saving.deserialize_keras_object(config['optimizer'],
                                                                    custom_objects=custom_objects)
        return cls(**config)


def build_learning_rate_schedule(solver: trainer_pb2.SolverOptions,
                                 multiplier: float = 1.0) -> keras.optimizers.schedules.LearningRateSchedule:
    """The schedule of `solver`, its base learning rate scaled by `multiplier` (backbone multiplier)."""
    base = solver.base_learning_rate * multiplier
    steps = solver.training_number_of_steps
    if solver.learning_policy == 'poly':
        schedule = keras.optimizers.schedules.PolynomialDecay(
            initial_learning_rate=base, decay_steps=steps, end_learning_rate=solver.poly_end_learning_rate * multiplier,
            power=solver.poly_learning_power, cycle=False)
    elif solver.learning_policy == 'cosine':
        schedule = keras.optimizers.schedules.CosineDecay(initial_learning_rate=base, decay_steps=steps, alpha=0.0)
    else:
        raise ValueError(f'SolverOptions.learning_policy must be one of {LEARNING_POLICIES}. Received: '
                         f'{solver.learning_policy!r}')
    if solver.warmup_steps > 0:
        schedule = LinearWarmUp(base, schedule, solver.warmup_steps)
    return schedule


def build_optimizer(solver: trainer_pb2.SolverOptions, learning_rate=None,
                    mixed_precision_policy: str = 'float32') -> keras.optimizers.Optimizer:
    """The optimizer of `solver`.

    Args:
      solver: SolverOptions.
      learning_rate: a float or schedule; default `build_learning_rate_schedule(solver)`.
      mixed_precision_policy: 'mixed_float16' wraps the optimizer in a dynamic LossScaleOptimizer.

    Returns:
      A Keras 3 optimizer. Gradient clipping is done by the train step (`clip_gradients`), not here.
    """
    if learning_rate is None:
        learning_rate = build_learning_rate_schedule(solver)
    name = solver.optimizer
    if name == 'adam':
        optimizer = keras.optimizers.Adam(learning_rate, beta_1=solver.adam_beta_1, beta_2=solver.adam_beta_2,
                                          epsilon=solver.adam_epsilon)
    elif name == 'adamw':
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=solver.adamw_weight_decay,
                                           beta_1=solver.adam_beta_1, beta_2=solver.adam_beta_2,
                                           epsilon=solver.adam_epsilon)
        # Decoupled decay on kernels only, as deeplab2's AdamWeightDecay.
        optimizer.exclude_from_weight_decay(var_names=[r'^(?!.*kernel(:\d+)?$)'])
    elif name == 'sgd':
        optimizer = keras.optimizers.SGD(learning_rate, momentum=solver.momentum, nesterov=solver.use_nesterov)
    elif name == 'radam':
        optimizer = RAdam(learning_rate, beta_1=solver.adam_beta_1, beta_2=solver.adam_beta_2,
                          epsilon=solver.adam_epsilon, sma_threshold=solver.radam_sma_threshold)
    else:
        raise ValueError(f'SolverOptions.optimizer must be one of {OPTIMIZERS}. Received: {name!r}')
    if solver.use_lookahead:
        optimizer = Lookahead(optimizer, sync_period=solver.lookahead_sync_period,
                              slow_step_size=solver.lookahead_slow_step_size)
    if mixed_precision_policy == 'mixed_float16':
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def set_mixed_precision_policy(policy: str) -> None:
    """Sets Keras' global dtype policy; call before building the model."""
    if policy not in PRECISION_POLICIES:
        raise ValueError(f'ModelOptions.mixed_precision_policy must be one of {PRECISION_POLICIES}. Received: '
                         f'{policy!r}')
    keras.mixed_precision.set_global_policy(policy)


def is_decayed(variable) -> bool:
    """Whether deeplab2-style L2 weight decay applies: convolution and dense kernels only."""
    name = getattr(variable, 'path', None) or variable.name
    return bool(_KERNEL_PATTERN.search(name))


def weight_decay_loss(variables: Sequence, weight_decay: float) -> tf.Tensor:
    """weight_decay * sum over kernels of sum(w^2) / 2, in float32 (deeplab2's `l2(weight_decay / 2)`)."""
    kernels = [v for v in variables if is_decayed(v)]
    if weight_decay <= 0 or not kernels:
        return tf.constant(0.0)
    return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])


def clip_gradients(gradients: List[tf.Tensor], clip_norm: float) -> Tuple[List[tf.Tensor], tf.Tensor]:
    """Clips by global norm; returns the clipped gradients and the norm before clipping."""
    return tf.clip_by_global_norm(gradients, clip_norm)


def split_backbone_variables(variables: Sequence, backbone_prefix: str) -> Tuple[list, list]:
    """Splits variables into (backbone, rest) by the path prefix of the encoder, for a backbone LR multiplier."""
    backbone = [v for v in variables if (getattr(v, 'path', None) or v.name).startswith(backbone_prefix)]
    ids = {id(v) for v in backbone}
    return backbone, [v for v in variables if id(v) not in ids]
