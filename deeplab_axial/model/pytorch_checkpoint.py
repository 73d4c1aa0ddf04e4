"""Reads the official PyTorch Axial-ResNet weights (csrhddlam/axial-deeplab `axialnet`) into our classifier.

The official models (axial26s, released as `axial26s.pth`, and axial50s/m/l) are our conv-stem Axial-ResNets built
with `PYTORCH_LAYOUT`: the 7x7/2 stem conv and 3x3/2 max-pool padded on both sides, strided blocks that attend at
full resolution and then average-pool, relative tables sized to each layer's axis length at 224 (kernel_size),
batch-norm epsilon 1e-5 and torchvision's ImageNet input normalisation. `PYTORCH_MODELS` names our registry
counterpart of each. The value layouts differ, and this module maps each of our variables to its PyTorch entry:

- conv weights [out, in, kh, kw] -> [kh, kw, in, out]; fc [classes, features] -> [features, classes].
- `qkv_transform` [2 * out, in, 1] holds (q, k, v) per head (gp / 2, gp / 2, gp channels, gp = out / heads); our
  `qkv_kernel` [in, 2 Dk + Dv] holds q | k | v over all heads. `bn_qkv` follows the same permutation.
- `bn_similarity` [3 * heads] is term-major (qk, qr, kr) as our [3, heads]; `bn_output` [2 * out] interleaves sv
  and sve per channel, ours is [2, out].
- `relative` [2 * gp, 2 * kernel_size - 1] stacks r^q, r^k, r^v with column (query - key) + kernel_size - 1 for r^q
  and r^v and (key - query) + kernel_size - 1 for r^k; our tables are [2 * max_span - 1, depth] indexed by
  (key - query) + max_span - 1, so r^q and r^v are reversed. A table of ours larger than the official one gets it at
  its centre and repeats its end rows outwards, which is what the official-sized table does by clipping.

State dicts come from a `.pth` file (through torch, when it is installed: it is not a dependency), or from an
`.npz` of the same names; the trainer's {'net': state_dict, ...} wrapper and DataParallel's `module.` prefixes are
removed. Every variable of ours must find its entry with the expected shape and no entry may be left over (the
`num_batches_tracked` counters excepted; each `flatten_index` buffer must be the index its table implies) before
anything is assigned.
"""

import os
from typing import Callable, Dict, Mapping, Optional, Tuple

import keras
import numpy as np

# Arguments of `registry.build_model` that build the official layout (on top of the PYTORCH_MODELS variant).
PYTORCH_LAYOUT = dict(stem='conv', stem_pool=True, symmetric_stem_padding=True, stride_by_average_pool=True,
                      project_strided_shortcut=True, bn_epsilon=1e-5, relative_table_input_size=224,
                      input_normalization='imagenet')
# The official models -> our registry names (same widths, stem width and blocks per stage).
PYTORCH_MODELS = {'axial26s': 'axial_resnet_26_s', 'axial50s': 'axial_resnet_s', 'axial50m': 'axial_resnet_m',
                  'axial50l': 'axial_resnet_l'}
# Settings that change what a converted model computes, checked before loading (table sizes are checked per table).
_CHECKED_LAYOUT = ('stem', 'stem_pool', 'symmetric_stem_padding', 'stride_by_average_pool',
                   'project_strided_shortcut', 'bn_epsilon')
_BATCH_NORM = {'gamma': 'weight', 'beta': 'bias', 'moving_mean': 'running_mean', 'moving_variance': 'running_var'}
_CONV_BN = {'stem_conv': ('conv1', 'bn1'), 'conv1': ('conv_down', 'bn1'), 'conv3': ('conv_up', 'bn2'),
            'shortcut': ('downsample.0', 'downsample.1')}
_AXES = {'height_axis': 'hight_block', 'width_axis': 'width_block'}
# Our attention batch norms -> the official ones (also the value kind, see `pytorch_key`).
_ATTENTION_BN = {'batch_norm_qkv': 'bn_qkv', 'batch_norm_similarity': 'bn_similarity',
                 'batch_norm_retrieved_output': 'bn_output'}
_IGNORED_SUFFIX = '.num_batches_tracked'
_INDEX_SUFFIX = '.flatten_index'


class PyTorchCheckpointError(ValueError):
    """A state dict that does not hold the model; the message names the entry or the file."""


def read_state_dict(path: str) -> Dict[str, np.ndarray]:
    """{name: array} from a PyTorch `.pth` (needs torch) or an `.npz` of the same names, unwrapped and unprefixed.

    Raises:
      PyTorchCheckpointError: a missing or unreadable file, a `.pth` without torch installed, no state dict inside.
    """
    if not os.path.isfile(path):
        raise PyTorchCheckpointError(f'PyTorch checkpoint {path!r} does not exist')
    if path.endswith('.npz'):
        with np.load(path, allow_pickle=False) as data:
            state = {name: data[name] for name in data.files}
    else:
        state = _read_pth(path)
    if not state:
        raise PyTorchCheckpointError(f'PyTorch checkpoint {path!r} holds no tensors')
    if all(name.startswith('module.') for name in state):  # saved from torch.nn.DataParallel
        state = {name[len('module.'):]: value for name, value in state.items()}
    return state


def _read_pth(path: str) -> Dict[str, np.ndarray]:
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise PyTorchCheckpointError(
            f'Reading {path!r} needs torch (pip install torch), or an .npz of its state dict: python -c "import '
            f'numpy, torch; s = torch.load(\'{path}\', map_location=\'cpu\'); s = s.get(\'net\', s); '
            f'numpy.savez(\'{os.path.splitext(path)[0]}.npz\', **{{k: v.numpy() for k, v in s.items()}})"'
        ) from None
    try:
        loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt or foreign file
        raise PyTorchCheckpointError(f'PyTorch checkpoint {path!r} cannot be read by torch.load: {e}') from None
    for key in ('net', 'state_dict'):  # the official trainer saves {'net': state_dict, 'epoch': ...}
        if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
            loaded = loaded[key]
            break
    if not isinstance(loaded, Mapping) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise PyTorchCheckpointError(f'PyTorch checkpoint {path!r} holds no state dict (a mapping of names to '
                                     'tensors, possibly under "net" or "state_dict")')
    return {name: value.detach().cpu().numpy() for name, value in loaded.items()}


def pytorch_key(path: str) -> Tuple[str, str]:
    """(official state-dict name, value kind) of our classifier variable at `path` below the model.

    Kinds: 'conv', 'fc', 'bias', 'bn' (same layout), 'qkv', 'bn_qkv', 'bn_similarity', 'bn_output', and
    'query_rpe' / 'key_rpe' / 'value_rpe' (parts of the `relative` entry).

    Raises:
      PyTorchCheckpointError: a name with no official counterpart (e.g. another stem).
    """
    parts = path.split('/')
    if parts[0] == 'classification_head':
        return f'fc.{"weight" if parts[1] == "kernel" else "bias"}', 'fc' if parts[1] == 'kernel' else 'bias'
    if parts[0] != 'encoder' or len(parts) < 3:
        raise PyTorchCheckpointError(f'PyTorch checkpoint: no official counterpart of our {path!r}')
    first, rest = parts[1], parts[2:]
    if first.startswith('res') and '_block' in first:
        stage, block = first[len('res'):].split('_block')
        prefix, (layer, *rest) = f'layer{int(stage) - 1}.{int(block) - 1}.', rest
    elif first == 'stem_conv':
        prefix, layer = '', first
    else:
        raise PyTorchCheckpointError(f'PyTorch checkpoint: our {path!r} has no official counterpart (the official '
                                     'models have the 7x7 conv stem)')
    if layer in _CONV_BN and rest[0] == 'conv':
        return prefix + _CONV_BN[layer][0] + '.weight', 'conv'
    if layer in _CONV_BN and rest[0] == 'batch_norm':
        return f'{prefix}{_CONV_BN[layer][1]}.{_BATCH_NORM[rest[1]]}', 'bn'
    if layer == 'attention' and rest[0] in _AXES:
        axis = prefix + _AXES[rest[0]] + '.'
        name = rest[1]
        if name == 'qkv_kernel':
            return axis + 'qkv_transform.weight', 'qkv'
        if name in ('query_rpe', 'key_rpe', 'value_rpe'):
            return axis + 'relative', name
        if name in _ATTENTION_BN:
            return f'{axis}{_ATTENTION_BN[name]}.{_BATCH_NORM[rest[2]]}', _ATTENTION_BN[name]
    raise PyTorchCheckpointError(f'PyTorch checkpoint: no official counterpart of our {path!r}')


def _qkv_order(total_key_depth: int, total_value_depth: int, heads: int) -> np.ndarray:
    """For each of our q | k | v channels, the official channel: per head, q (dk), k (dk), v (dv)."""
    dk, dv = total_key_depth // heads, total_value_depth // heads
    per_head = 2 * dk + dv
    head_k = np.arange(total_key_depth) // dk
    head_v = np.arange(total_value_depth) // dv
    return np.concatenate([head_k * per_head + np.arange(total_key_depth) % dk,
                           head_k * per_head + dk + np.arange(total_key_depth) % dk,
                           head_v * per_head + 2 * dk + np.arange(total_value_depth) % dv])


def _relative_part(table: np.ndarray, kind: str, key_depth: int, rows: int) -> np.ndarray:
    """Our [rows, depth] table `kind` from the official [2 dk + dv, 2 kernel_size - 1] `relative`."""
    part = {'query_rpe': table[:key_depth], 'key_rpe': table[key_depth:2 * key_depth],
            'value_rpe': table[2 * key_depth:]}[kind]
    if kind != 'key_rpe':  # official column (query - key) + ks - 1; our row (key - query) + max_span - 1
        part = part[:, ::-1]
    pad = (rows - part.shape[1]) // 2
    return np.pad(part.T, [(pad, pad), (0, 0)], mode='edge')


def _converter(kind: str, layer: Optional[keras.layers.Layer], shape: Tuple[int, ...]
               ) -> Tuple[Callable[[Tuple[int, ...]], bool], Callable[[np.ndarray], np.ndarray], str]:
    """(accepts(official shape), convert(official value), expected-shape text) for one variable of ours of `shape`;
    `layer` is its `AxialAttention` layer (for attention variables)."""
    def exact(expected):
        return (lambda theirs: tuple(theirs) == tuple(expected)), str(list(expected))

    if kind == 'conv':
        accepts, text = exact((shape[3], shape[2], shape[0], shape[1]))
        return accepts, lambda v: v.transpose(2, 3, 1, 0), text
    if kind == 'fc':
        accepts, text = exact((shape[1], shape[0]))
        return accepts, lambda v: v.T, text
    if kind in ('bn', 'bias'):
        accepts, text = exact(shape)
        return accepts, lambda v: v, text
    if kind in ('qkv', 'bn_qkv'):
        order = _qkv_order(layer.total_key_depth, layer.total_value_depth, layer.num_heads)
        if kind == 'qkv':
            accepts, text = exact((shape[1], shape[0], 1))
            return accepts, lambda v: v[order, :, 0].T, text
        accepts, text = exact(shape)
        return accepts, lambda v: v[order], text
    if kind == 'bn_similarity':  # [3 * heads] term-major = our [3, heads]
        accepts, text = exact((shape[0] * shape[1],))
        return accepts, lambda v: v.reshape(shape), text
    if kind == 'bn_output':  # [2 * out], channel c's (sv, sve) at 2c, 2c + 1 -> our [2, out]
        accepts, text = exact((shape[0] * shape[1],))
        return accepts, lambda v: v.reshape(shape[1], shape[0]).T, text
    key_depth = layer.total_key_depth // layer.num_heads
    depth = 2 * key_depth + layer.total_value_depth // layer.num_heads
    rows = shape[0]

    def accepts_table(theirs):
        return len(theirs) == 2 and theirs[0] == depth and theirs[1] % 2 == 1 and theirs[1] <= rows
    return (accepts_table, lambda v: _relative_part(v, kind, key_depth, rows),
            f'[{depth}, 2 * kernel_size - 1 <= {rows}]')


def _check_layout(model: keras.Model) -> None:
    encoder = getattr(model, 'encoder', None)
    if getattr(model, 'classification_head', None) is None or encoder is None:
        raise PyTorchCheckpointError(f'PyTorch checkpoint: the official models are ImageNet classifiers; '
                                     f'{model.name} is not (build a classification model)')
    if not model.built:
        raise PyTorchCheckpointError(f'PyTorch checkpoint: build {model.name} first (e.g. at 224x224)')
    config = encoder.get_config()
    layout = {name: config[name] for name in _CHECKED_LAYOUT + ('output_stride',)}
    layout['input_normalization'] = model.input_normalization
    expected = {name: PYTORCH_LAYOUT[name] for name in _CHECKED_LAYOUT + ('input_normalization',)}
    expected['output_stride'] = 32
    wrong = {name: value for name, value in layout.items()
             if (not np.isclose(value, expected[name]) if name == 'bn_epsilon' else value != expected[name])}
    if wrong:
        raise PyTorchCheckpointError(f'PyTorch checkpoint: {model.name} has {wrong}; the official layout needs '
                                     f'{expected} (registry overrides PYTORCH_LAYOUT, or '
                                     'model_options.backbone.pytorch_layout: true)')


def _check_flatten_index(name: str, index: np.ndarray, table_columns: int) -> None:
    """The official buffer must be (i - j + kernel_size - 1) over i, j < kernel_size, kernel_size from its table."""
    size = (table_columns + 1) // 2
    expected = (np.arange(size)[:, None] - np.arange(size)[None, :] + size - 1).reshape(-1)
    if index.shape != expected.shape or not np.array_equal(index, expected):
        raise PyTorchCheckpointError(f'PyTorch checkpoint: {name!r} is not the relative index of a kernel_size '
                                     f'{size} table (shape {list(index.shape)})')


def load_pytorch_state_dict(model: keras.Model, state: Mapping[str, np.ndarray], source: str = 'state dict'
                            ) -> Dict[str, str]:
    """Assigns every variable of our built classifier from an official state dict.

    Args:
      model: a built `AxialResNetClassifier` in `PYTORCH_LAYOUT` with the official widths, depths, heads and classes.
      state: {official name: array}, e.g. from `read_state_dict`.
      source: the file the state came from, for messages.

    Returns:
      {our variable path: official name} of what was assigned.

    Raises:
      PyTorchCheckpointError: another layout, a missing entry, a shape that differs, a wrong index buffer or an
        entry with no counterpart here; nothing is assigned then.
    """
    _check_layout(model)
    # The attention layer of each attention variable: its depths and heads shape the conversion.
    attention = {id(variable): axis for blocks in model.encoder.stages for block in blocks
                 for axis in (block.attention.height_axis, block.attention.width_axis) for variable in axis.weights}
    values, assigned = [], {}
    for item_name, item in model.checkpoint_items.items():
        for variable in item.weights:
            parts = variable.path.split('/')
            path = '/'.join([item_name] + parts[parts.index(item.name) + 1:])
            key, kind = pytorch_key(path)
            if key not in state:
                raise PyTorchCheckpointError(f'PyTorch checkpoint {source}: no {key!r} for our {path!r} (another '
                                             'model? axial26s/50s/50m/50l are registry names '
                                             f'{PYTORCH_MODELS})')
            accepts, convert, expected = _converter(kind, attention.get(id(variable)), tuple(variable.shape))
            if not accepts(state[key].shape):
                raise PyTorchCheckpointError(f'PyTorch checkpoint {source}: {key!r} has shape '
                                             f'{list(state[key].shape)}, our {path!r} needs {expected}')
            values.append((variable, convert(np.asarray(state[key]))))
            assigned[variable.path] = key
    used = set(assigned.values())
    for name, value in state.items():
        if name.endswith(_INDEX_SUFFIX) and name[:-len(_INDEX_SUFFIX)] + '.relative' in used:
            _check_flatten_index(name, np.asarray(value), state[name[:-len(_INDEX_SUFFIX)] + '.relative'].shape[1])
            used.add(name)
    left_over = sorted(name for name in state if name not in used and not name.endswith(_IGNORED_SUFFIX))
    if left_over:
        raise PyTorchCheckpointError(f'PyTorch checkpoint {source}: {len(left_over)} entries have no counterpart in '
                                     f'{model.name} (another depth or layout?), e.g. {", ".join(left_over[:5])}')
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return assigned


def load_pytorch_checkpoint(model: keras.Model, path: str) -> Dict[str, str]:
    """`load_pytorch_state_dict(model, read_state_dict(path))`: a `.pth` (torch needed) or `.npz` file."""
    return load_pytorch_state_dict(model, read_state_dict(path), source=path)

