"""Loads and validates experiment configs (`ExperimentOptions` textprotos, deeplab2's config language).

A config may carry `${NAME}` placeholders, as deeplab2's do (`${EXPERIMENT_NAME}`, `${TRAIN_SET}`); `load_config`
fills them from a mapping (e.g. command-line flags), then from the environment, and names every one left unfilled
with its file and line. `validate` checks the rules that span several fields (crop size versus output stride,
head size versus dataset, batch size versus replicas, ...) so that a bad config fails before any model is built,
with a message that names the fields involved. A layer above the library adds the rules of what it builds through
`validate`'s `checks` (the trainer: optimizer, learning-rate schedule and mixed precision, trainer/config_checks.py),
so that one error still lists every violation.
"""

import os
import re
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from google.protobuf import text_format

from deeplab_axial import unsupported_fields
from deeplab_axial.data import dataset as dataset_lib
from deeplab_axial.model.encoder import axial_resnet
from deeplab_axial.protos import config_pb2
from deeplab_axial.protos import dataset_pb2
from deeplab_axial.protos import evaluator_pb2

_PLACEHOLDER = re.compile(r'\$\{([A-Za-z_][A-Za-z0-9_]*)\}')

# The valid values of the other enumerated fields live with the code that uses them and are read from there: the
# encoder's here, the optimizer builder's by the trainer's own rules (trainer/config_checks.py).
SUPPORTED_META_ARCHITECTURES = ('panoptic_deeplab', 'classification')
# The loss each trainer_options.loss_options field computes (deeplab2's names).
LOSS_NAMES = {'semantic_loss': 'softmax_cross_entropy', 'center_loss': 'mse', 'regression_loss': 'l1',
              'classification_loss': 'softmax_cross_entropy'}


class ConfigError(ValueError):
    """A config that cannot be loaded or violates a rule; the message names the file or fields."""


def _comment_start(line: str) -> int:
    """Index of the `#` that starts a comment on a textproto line (outside quotes), or len(line)."""
    quote = None
    escaped = False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == '\\':
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in '"\'':
            quote = ch
        elif ch == '#':
            return i
    return len(line)


def _escape(value: str) -> str:
    return value.replace('\\', '\\\\').replace('"', '\\"').replace("'", "\\'")


def parse_config_params(params: Sequence[str]) -> Dict[str, str]:
    """Turns --config_param values ['NAME=VALUE', ...] into a dict; an entry without '=' is an error naming the flag."""
    values = {}
    for item in params:
        name, sep, value = item.partition('=')
        if not sep or not name:
            raise ConfigError(f'--config_param expects NAME=VALUE. Received: {item!r}')
        values[name] = value
    return values


def fill_placeholders(text: str, params: Optional[Mapping[str, str]] = None,
                      source: str = '<string>') -> Tuple[str, List[str]]:
    """Replaces `${NAME}` outside comments by params[NAME], else os.environ[NAME].

    Args:
      text: textproto source.
      params: values that take precedence over the environment.
      source: file name used in the messages.

    Returns:
      The filled text and one `file:line: ${NAME}` entry per placeholder left unfilled.
    """
    params = dict(params or {})
    unfilled = []
    lines = text.split('\n')
    for n, line in enumerate(lines):
        cut = _comment_start(line)
        code, comment = line[:cut], line[cut:]

        def _sub(match, n=n):
            name = match.group(1)
            value = params.get(name, os.environ.get(name))
            if value is None:
                unfilled.append(f'{source}:{n + 1}: ${{{name}}}')
                return match.group(0)
            return _escape(str(value))

        lines[n] = _PLACEHOLDER.sub(_sub, code) + comment
    return '\n'.join(lines), unfilled


def parse_config(text: str, source: str = '<string>', params: Optional[Mapping[str, str]] = None,
                 allow_unfilled: bool = False) -> config_pb2.ExperimentOptions:
    """Parses an `ExperimentOptions` textproto after filling its placeholders.

    Raises:
      ConfigError: a placeholder is unfilled (unless allow_unfilled) or the text does not parse; the message
        gives `source:line:column`.
    """
    text, unfilled = fill_placeholders(text, params, source)
    if unfilled and not allow_unfilled:
        raise ConfigError('Unfilled placeholders (pass them as --config_param NAME=VALUE or set the environment '
                          'variable of the same name):\n  ' + '\n  '.join(unfilled))
    config = config_pb2.ExperimentOptions()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as e:
        where = f'{e.GetLine()}:{e.GetColumn()}' if e.GetLine() is not None else '?'
        message = str(e).split(' : ', 1)[-1]
        raise ConfigError(f'{source}:{where}: {message}') from None
    return config


def load_config(path: str, params: Optional[Mapping[str, str]] = None,
                allow_unfilled: bool = False) -> config_pb2.ExperimentOptions:
    """Reads and parses a config file; see `parse_config`."""
    if not os.path.isfile(path):
        raise ConfigError(f'Config file {path!r} does not exist')
    with open(path) as f:
        return parse_config(f.read(), source=path, params=params, allow_unfilled=allow_unfilled)


def descriptor_from_options(options: dataset_pb2.DatasetDescriptorOptions) -> dataset_lib.DatasetDescriptor:
    """Turns a config's `dataset_descriptor` block into a `DatasetDescriptor`."""
    return dataset_lib.DatasetDescriptor(
        name=options.name,
        splits_to_sizes=dict(options.splits_to_sizes),
        num_classes=options.num_classes,
        ignore_label=options.ignore_label,
        panoptic_label_divisor=options.panoptic_label_divisor,
        class_has_instances_list=tuple(options.class_has_instances_list),
        colormap=tuple((c.r, c.g, c.b) for c in options.colormap),
        class_names=tuple(options.class_names),
        dataset_ids=tuple(options.dataset_ids) or None,
        task=options.task,
    )


def get_dataset_descriptor(options: dataset_pb2.DatasetOptions,
                           field: str = 'train_dataset_options') -> dataset_lib.DatasetDescriptor:
    """The descriptor a DatasetOptions names; a `dataset_descriptor` block is registered first.

    Raises:
      ConfigError: the name is unknown (the message lists the registered ones) or disagrees with the block.
    """
    if options.HasField('dataset_descriptor'):
        block = options.dataset_descriptor
        if block.name != options.dataset:
            raise ConfigError(f'{field}.dataset_descriptor.name {block.name!r} must equal {field}.dataset '
                              f'{options.dataset!r}')
        try:
            descriptor = descriptor_from_options(block)
        except ValueError as e:
            raise ConfigError(f'{field}.dataset_descriptor: {e}') from None
        dataset_lib.register(descriptor, overwrite=True)
        return descriptor
    try:
        return dataset_lib.get(options.dataset)
    except KeyError:
        raise ConfigError(f'{field}.dataset {options.dataset!r} is not registered. Registered datasets: '
                          f'{dataset_lib.names()}; or describe it in {field}.dataset_descriptor') from None


def crop_size(options: dataset_pb2.DatasetOptions, field: str) -> Tuple[int, int]:
    """(crop_height, crop_width) of a dataset block.

    Raises:
      ConfigError: the field does not hold two positive values; the message names `field`.crop_size.
    """
    crop = list(options.crop_size)
    if len(crop) != 2 or min(crop) <= 0:
        raise ConfigError(f'{field}.crop_size must hold [crop_height, crop_width], both positive. Received: {crop}')
    return crop[0], crop[1]


class _Checker:
    """Collects every violated rule so that one run reports them all."""

    def __init__(self):
        self.errors: List[str] = []

    def require(self, ok: bool, message: str) -> None:
        if not ok:
            self.errors.append(message)


def _check_model(c: _Checker, model) -> None:
    backbone = model.backbone
    c.require(bool(backbone.name), 'model_options.backbone.name must be set')
    c.require(backbone.output_stride in axial_resnet.OUTPUT_STRIDES,
              f'model_options.backbone.output_stride must be one of {axial_resnet.OUTPUT_STRIDES}. '
              f'Received: {backbone.output_stride}')
    c.require(backbone.axial_span == 0 or (backbone.axial_span > 0 and backbone.axial_span % 2 == 1),
              'model_options.backbone.axial_span must be odd (a window centred on each pixel) or 0 (global). '
              f'Received: {backbone.axial_span}')
    c.require(backbone.num_heads > 0, f'model_options.backbone.num_heads must be positive. Received: '
              f'{backbone.num_heads}')
    c.require(0.0 < backbone.drop_path_keep_prob <= 1.0,
              f'model_options.backbone.drop_path_keep_prob must be in (0, 1]. Received: '
              f'{backbone.drop_path_keep_prob}')
    c.require(backbone.drop_path_schedule in axial_resnet.DROP_PATH_SCHEDULES,
              f'model_options.backbone.drop_path_schedule must be one of {axial_resnet.DROP_PATH_SCHEDULES}. '
              f'Received: {backbone.drop_path_schedule!r}')


def _check_loss(c: _Checker, field: str, loss, name: str) -> None:
    c.require(loss.name in ('', name), f'{field}.name must be {name!r} (the loss deeplab_axial computes there). '
              f'Received: {loss.name!r}')
    c.require(loss.weight >= 0, f'{field}.weight must be non-negative. Received: {loss.weight}')
    c.require(0.0 < loss.top_k_percent <= 1.0, f'{field}.top_k_percent must be in (0, 1]. Received: '
              f'{loss.top_k_percent}')
    c.require(0.0 <= loss.label_smoothing < 1.0, f'{field}.label_smoothing must be in [0, 1). Received: '
              f'{loss.label_smoothing}')


def _check_dataset(c: _Checker, config, field: str, num_replicas: int, meta: str
                   ) -> Optional[dataset_lib.DatasetDescriptor]:
    options = getattr(config, field)
    try:
        descriptor = get_dataset_descriptor(options, field)
    except ConfigError as e:
        c.errors.append(str(e))
        return None
    c.require(options.batch_size > 0 and options.batch_size % num_replicas == 0,
              f'{field}.batch_size ({options.batch_size}) must be a positive multiple of the number of replicas '
              f'({num_replicas})')
    try:
        crop = crop_size(options, field)
    except ConfigError as e:
        c.errors.append(str(e))
        crop = None
    stride = config.model_options.backbone.output_stride
    if meta == 'panoptic_deeplab' and crop is not None and stride in axial_resnet.OUTPUT_STRIDES:
        c.require(all((s - 1) % stride == 0 for s in crop),
                  f'{field}.crop_size {list(crop)} must be k * model_options.backbone.output_stride ({stride}) + 1 per '
                  f'side, e.g. {[-(-(s - 1) // stride) * stride + 1 for s in crop]}')
    expected_task = 'classification' if meta == 'classification' else 'panoptic'
    c.require(descriptor.task == expected_task,
              f'{field}.dataset {descriptor.name!r} is a {descriptor.task} dataset, but model_options uses the '
              f'{meta} meta-architecture, which needs a {expected_task} dataset')
    aug = options.augmentations
    c.require(0 < aug.min_scale_factor <= aug.max_scale_factor and aug.scale_factor_step_size >= 0,
              f'{field}.augmentations: need 0 < min_scale_factor ({aug.min_scale_factor}) <= max_scale_factor '
              f'({aug.max_scale_factor}) and scale_factor_step_size >= 0 ({aug.scale_factor_step_size})')
    return descriptor


def _check_meta_architecture(c: _Checker, config, meta: str,
                             descriptor: Optional[dataset_lib.DatasetDescriptor]) -> None:
    model = config.model_options
    losses = config.trainer_options.loss_options
    prefix = 'trainer_options.loss_options'
    if meta == 'panoptic_deeplab':
        head = model.panoptic_deeplab.semantic_head
        if descriptor is not None and descriptor.is_panoptic:
            c.require(head.output_channels == descriptor.num_classes,
                      f'model_options.panoptic_deeplab.semantic_head.output_channels ({head.output_channels}) must '
                      f'equal the number of classes of train_dataset_options.dataset {descriptor.name!r} '
                      f'({descriptor.num_classes})')
        needed = ['semantic_loss', 'center_loss', 'regression_loss']
        instance = model.panoptic_deeplab.instance  # Always built: `unsupported_fields` rejects enable: false.
        c.require(instance.center_head.output_channels == 1,
                  'model_options.panoptic_deeplab.instance.center_head.output_channels must be 1')
        c.require(instance.regression_head.output_channels == 2,
                  'model_options.panoptic_deeplab.instance.regression_head.output_channels must be 2 (dy, dx)')
    else:
        classes = model.classification.num_classes
        c.require(0.0 <= model.classification.dropout_rate < 1.0,
                  'model_options.classification.dropout_rate must be in [0, 1). Received: '
                  f'{model.classification.dropout_rate}')
        if descriptor is not None and not descriptor.is_panoptic:
            c.require(classes == descriptor.num_classes,
                      f'model_options.classification.num_classes ({classes}) must equal the number of classes of '
                      f'train_dataset_options.dataset {descriptor.name!r} ({descriptor.num_classes})')
        needed = ['classification_loss']
    for name in needed:
        if losses.HasField(name):
            _check_loss(c, f'{prefix}.{name}', getattr(losses, name), LOSS_NAMES[name])
        else:
            c.errors.append(f'{prefix}.{name} must be set for the {meta} meta-architecture')
    for name in sorted(set(LOSS_NAMES) - set(needed)):
        c.require(not losses.HasField(name), f'{prefix}.{name} is not used by the {meta} meta-architecture: '
                  'remove it')


def _check_evaluator(c: _Checker, evaluator) -> None:
    prefix = 'evaluator_options'
    c.require(evaluator.nms_kernel > 0 and evaluator.nms_kernel % 2 == 1,
              f'{prefix}.nms_kernel must be odd and positive. Received: {evaluator.nms_kernel}')
    c.require(evaluator.keep_k_centers == -1 or evaluator.keep_k_centers > 0,
              f'{prefix}.keep_k_centers must be -1 (all) or positive. Received: {evaluator.keep_k_centers}')
    c.require(0.0 <= evaluator.center_score_threshold <= 1.0,
              f'{prefix}.center_score_threshold must be in [0, 1]. Received: {evaluator.center_score_threshold}')
    c.require(all(s > 0 for s in evaluator.eval_scales),
              f'{prefix}.eval_scales must be positive. Received: {list(evaluator.eval_scales)}')
    c.require(evaluator.eval_interval > 0, f'{prefix}.eval_interval must be positive. Received: '
              f'{evaluator.eval_interval}')


def eval_scales(evaluator: evaluator_pb2.EvaluatorOptions) -> Tuple[float, ...]:
    """evaluator_options.eval_scales, or (1.0,) when the field is empty (deeplab2's default)."""
    return tuple(evaluator.eval_scales) or (1.0,)


ConfigCheck = Callable[[config_pb2.ExperimentOptions], List[str]]


def validate(config: config_pb2.ExperimentOptions, num_replicas: int = 1,
             checks: Sequence[ConfigCheck] = ()) -> Dict[str, dataset_lib.DatasetDescriptor]:
    """Checks cross-field rules; registers `dataset_descriptor` blocks on the way.

    Args:
      config: a parsed ExperimentOptions.
      num_replicas: replicas that train (the train batch size must divide evenly). Evaluation takes any batch
        size on any number of replicas (the evaluator pads the last batch), so it has no such rule.
      checks: further rules, each returning the messages of the ones `config` violates (naming the fields),
        reported together with these.

    Returns:
      The dataset descriptors of the datasets that are set, keyed 'train' / 'eval'.

    Raises:
      ConfigError: listing every violated rule, each naming the fields involved.
    """
    c = _Checker()
    meta = config.model_options.WhichOneof('meta_architecture')
    if meta not in SUPPORTED_META_ARCHITECTURES:
        raise ConfigError(f'model_options: meta-architecture {meta!r} is not supported by deeplab_axial; set one '
                          f'of {SUPPORTED_META_ARCHITECTURES}')
    c.errors += unsupported_fields.unsupported_fields(config)
    _check_model(c, config.model_options)
    _check_evaluator(c, config.evaluator_options)
    descriptors = {}
    for key, field in (('train', 'train_dataset_options'), ('eval', 'eval_dataset_options')):
        if getattr(config, field).dataset:
            descriptor = _check_dataset(c, config, field, num_replicas if key == 'train' else 1, meta)
            if descriptor is not None:
                descriptors[key] = descriptor
    if 'train' in descriptors and 'eval' in descriptors:
        train, evaluation = descriptors['train'], descriptors['eval']
        c.require(train.num_classes == evaluation.num_classes and train.task == evaluation.task,
                  f'train_dataset_options.dataset {train.name!r} and eval_dataset_options.dataset '
                  f'{evaluation.name!r} must have the same task and number of classes')
    _check_meta_architecture(c, config, meta, descriptors.get('train', descriptors.get('eval')))
    for check in checks:
        c.errors += check(config)
    if c.errors:
        raise ConfigError(f'Invalid config {config.experiment_name!r}:\n  - ' + '\n  - '.join(c.errors))
    return descriptors
