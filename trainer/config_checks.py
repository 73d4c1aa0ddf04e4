"""The trainer's config rules: the fields of what it builds, on top of `config_utils.validate`'s model, data and
evaluation rules.

Optimizer, learning policy and mixed-precision policy are checked against the tables of `optimizer_builder`, the code
that builds them; the solver's numbers and the controller's intervals against what they must be. `validate` runs
these with the library's rules, so one ConfigError lists every violation, each naming its field.
"""

from typing import Dict, List

from deeplab_axial import config_utils
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.protos import config_pb2
from trainer import optimizer_builder

_SOLVER = 'trainer_options.solver_options'
_INTERVALS = ('steps_per_loop', 'save_checkpoints_steps', 'save_summaries_steps', 'num_checkpoints_to_keep')


def training_errors(config: config_pb2.ExperimentOptions) -> List[str]:
    """The messages of the trainer's rules that `config` violates (empty when it follows them all)."""
    solver = config.trainer_options.solver_options
    precision = config.model_options.mixed_precision_policy
    rules = [
        (precision in optimizer_builder.PRECISION_POLICIES,
         f'model_options.mixed_precision_policy must be one of {optimizer_builder.PRECISION_POLICIES}. Received: '
         f'{precision!r}'),
        (solver.optimizer in optimizer_builder.OPTIMIZERS,
         f'{_SOLVER}.optimizer must be one of {optimizer_builder.OPTIMIZERS}. Received: {solver.optimizer!r}'),
        (solver.learning_policy in optimizer_builder.LEARNING_POLICIES,
         f'{_SOLVER}.learning_policy must be one of {optimizer_builder.LEARNING_POLICIES}. Received: '
         f'{solver.learning_policy!r}'),
        (solver.base_learning_rate > 0,
         f'{_SOLVER}.base_learning_rate must be positive. Received: {solver.base_learning_rate}'),
        (solver.training_number_of_steps > 0,
         f'{_SOLVER}.training_number_of_steps must be positive. Received: {solver.training_number_of_steps}'),
        (0 <= solver.warmup_steps < solver.training_number_of_steps,
         f'{_SOLVER}.warmup_steps ({solver.warmup_steps}) must be in [0, {_SOLVER}.training_number_of_steps '
         f'({solver.training_number_of_steps}))'),
        (solver.weight_decay >= 0 and solver.adamw_weight_decay >= 0,
         f'{_SOLVER}.weight_decay and {_SOLVER}.adamw_weight_decay must be non-negative'),
        (not solver.use_gradient_clipping or solver.clip_gradient_norm > 0,
         f'{_SOLVER}.clip_gradient_norm must be positive when {_SOLVER}.use_gradient_clipping is true. Received: '
         f'{solver.clip_gradient_norm}'),
        (solver.backbone_learning_rate_multiplier > 0,
         f'{_SOLVER}.backbone_learning_rate_multiplier must be positive'),
        (not solver.use_lookahead or solver.lookahead_sync_period >= 1,
         f'{_SOLVER}.lookahead_sync_period must be >= 1 when {_SOLVER}.use_lookahead is true. Received: '
         f'{solver.lookahead_sync_period}'),
        (not solver.use_lookahead or 0.0 < solver.lookahead_slow_step_size <= 1.0,
         f'{_SOLVER}.lookahead_slow_step_size must be in (0, 1] when {_SOLVER}.use_lookahead is true. Received: '
         f'{solver.lookahead_slow_step_size}'),
        (not solver.use_nesterov or solver.optimizer == 'sgd',
         f'{_SOLVER}.use_nesterov only applies to {_SOLVER}.optimizer "sgd". Received optimizer: '
         f'{solver.optimizer!r}'),
    ]
    for name in _INTERVALS:
        value = getattr(config.trainer_options, name)
        rules.append((value > 0, f'trainer_options.{name} must be positive. Received: {value}'))
    return [message for ok, message in rules if not ok]


def validate(config: config_pb2.ExperimentOptions, num_replicas: int = 1) -> Dict[str, DatasetDescriptor]:
    """`config_utils.validate` with the trainer's rules: the dataset descriptors by 'train' / 'eval'.

    Raises:
      config_utils.ConfigError listing every violated rule of both.
    """
    return config_utils.validate(config, num_replicas, checks=(training_errors,))
