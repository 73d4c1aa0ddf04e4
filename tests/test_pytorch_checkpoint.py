"""The official PyTorch Axial-ResNet weights in our classifier, checked against the official code's own outputs.

tests/data/pytorch was written by the official model (csrhddlam/axial-deeplab `lib/models/axialnet.py`, run in a
scratch environment by make_fixtures.py there): axial26s_small.npz, the state dict of an axial26s layout at width
0.125 with 4 heads and random weights for 64x64 inputs; axial26s_small_outputs.npz, two images and the official
logits and layer1..4 outputs on them; axial_official_layouts.json, the names, shapes and parameter counts of the
full-size axial26s/50s/50m/50l.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.model import pytorch_checkpoint, registry
from deeplab_axial.model.deeplab import normalize_image
from deeplab_axial.model.pytorch_checkpoint import (PYTORCH_LAYOUT, PYTORCH_MODELS, PyTorchCheckpointError,
                                                    load_pytorch_checkpoint, load_pytorch_state_dict,
                                                    read_state_dict)

_DATA = os.path.join(os.path.dirname(__file__), 'data', 'pytorch')
STATE = os.path.join(_DATA, 'axial26s_small.npz')
# The fixture's model: tables sized for its 64x64 input (the official kernel sizes 16/16/8/4).
SMALL = dict(PYTORCH_LAYOUT, width_multiplier=0.125, stem_width_multiplier=0.125, num_heads=4, num_classes=6,
             relative_table_input_size=64)
# Largest |ours - official| over the largest |official|. The official model's own float32 logits are 1.6e-6 from
# its float64 ones on this fixture (make_fixtures.py); each wrong mapping below moves them by 0.4 or more.
TOLERANCE = 1e-4
_ENDPOINTS = {'res2': 'layer1', 'res3': 'layer2', 'res4': 'layer3', 'res5': 'layer4'}


def small_model(**overrides):
    model = registry.build_model('axial_resnet_26_s', **dict(SMALL, **overrides))
    model.build((None, 64, 64, 3))
    return model


def relative_error(got, expected):
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


@pytest.fixture(scope='module')
def outputs():
    return np.load(os.path.join(_DATA, 'axial26s_small_outputs.npz'))


@pytest.fixture(scope='module')
def state():
    return read_state_dict(STATE)


def test_logits_and_stages_equal_the_official_model(outputs):
    model = small_model()
    assigned = load_pytorch_checkpoint(model, STATE)
    assert len(assigned) == len(model.weights)
    logits = model(tf.constant(outputs['images']))['logits']
    assert relative_error(logits, outputs['logits']) < TOLERANCE
    features = model.encoder(normalize_image(tf.constant(outputs['images']), 'float32', 'imagenet'))
    for ours, theirs in _ENDPOINTS.items():
        assert relative_error(features[ours], outputs[theirs]) < TOLERANCE, ours


def test_tables_larger_than_the_official_ones_hold_them_at_their_centre(outputs, state):
    """Our default 509-row tables: the official 2 * kernel_size - 1 columns in the middle, their end rows repeated
    outwards (what the official-sized table gives by clipping), so the outputs stay the same."""
    model = small_model(relative_table_input_size=None)
    load_pytorch_state_dict(model, state)
    assert relative_error(model(tf.constant(outputs['images']))['logits'], outputs['logits']) < TOLERANCE
    table = state['layer1.0.hight_block.relative']  # [2 dk + dv, 31]: r^q of depth dk = 2 first
    ours = model.encoder.res2_block1.attention.height_axis.query_rpe.numpy()
    assert ours.shape == (509, 2)
    np.testing.assert_array_equal(ours[254 - 15:254 + 16], table[:2, ::-1].T)
    np.testing.assert_array_equal(ours[:254 - 15], np.broadcast_to(table[:2, -1], (239, 2)))


def _reverse_relative_rows(state, rows):
    """The state dict as a loader that does not reverse (or wrongly reverses) those table rows would read it."""
    state = dict(state)
    for name, value in state.items():
        if name.endswith('.relative'):
            dk = value.shape[0] // 4
            selected = {'query': slice(0, dk), 'key': slice(dk, 2 * dk), 'value': slice(2 * dk, None)}[rows]
            value = value.copy()
            value[selected] = value[selected, ::-1]
            state[name] = value
    return state


def _term_major_output_bn(state):
    state = dict(state)
    for name, value in state.items():
        if '.bn_output.' in name and not name.endswith('num_batches_tracked'):
            state[name] = value.reshape(-1, 2).T.reshape(-1)
    return state


@pytest.mark.parametrize('wrong', ['unreversed r^q', 'reversed r^k', 'unreversed r^v', 'term-major output bn',
                                   'qkv not grouped per head'])
def test_a_wrong_mapping_fails_the_comparison(wrong, outputs, state, monkeypatch):
    if wrong == 'qkv not grouped per head':
        monkeypatch.setattr(pytorch_checkpoint, '_qkv_order', lambda dk, dv, heads: np.arange(2 * dk + dv))
    elif wrong == 'term-major output bn':
        state = _term_major_output_bn(state)
    else:
        state = _reverse_relative_rows(state, wrong.split('^')[1][0].replace('q', 'query').replace(
            'k', 'key').replace('v', 'value'))
    model = small_model()
    load_pytorch_state_dict(model, state)
    assert relative_error(model(tf.constant(outputs['images']))['logits'], outputs['logits']) > 1e-2


@pytest.mark.parametrize('change', ['symmetric_stem_padding', 'stride_by_average_pool'])
def test_padding_and_pooling_layout_matter(change, outputs, state, monkeypatch):
    """Keras 'same' padding of the stem, or subsampling after each axis, give other logits at these even sizes;
    the loader refuses such a model."""
    model = small_model(**{change: False})
    with pytest.raises(PyTorchCheckpointError, match=change):
        load_pytorch_state_dict(model, state)
    monkeypatch.setattr(pytorch_checkpoint, '_check_layout', lambda model: None)  # read the weights anyway
    load_pytorch_state_dict(model, state)
    assert relative_error(model(tf.constant(outputs['images']))['logits'], outputs['logits']) > 1e-2


@pytest.mark.parametrize('edit, message', [
    (lambda s: s.pop('layer3.2.conv_up.weight'), "no 'layer3.2.conv_up.weight' for our 'encoder/res4_block3/conv3"),
    (lambda s: s.__setitem__('layer2.0.width_block.relative', np.zeros((8, 99), np.float32)),
     r"'layer2.0.width_block.relative' has shape \[8, 99\], our 'encoder/res3_block1/attention/width_axis/"),
    (lambda s: s.__setitem__('layer4.1.conv_down.weight', np.zeros((1,), np.float32)),
     r'1 entries have no counterpart in axial_resnet_26_s .*layer4.1.conv_down.weight'),
    (lambda s: s.__setitem__('layer1.0.hight_block.flatten_index', np.arange(961)),
     "'layer1.0.hight_block.flatten_index' is not the relative index of a kernel_size 16 table"),
])
def test_a_mismatch_names_the_entry_and_assigns_nothing(edit, message, state):
    state = dict(state)
    edit(state)
    model = small_model()
    before = [v.numpy() for v in model.weights]
    with pytest.raises(PyTorchCheckpointError, match=message):
        load_pytorch_state_dict(model, state)
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, model.weights))


def test_other_layouts_and_models_are_refused(state):
    default = registry.build_model('axial_resnet_26_s', width_multiplier=0.125, stem_width_multiplier=0.125,
                                   num_heads=4, num_classes=6)
    default.build((None, 64, 64, 3))
    with pytest.raises(PyTorchCheckpointError, match='the official layout needs'):
        load_pytorch_state_dict(default, state)
    panoptic = registry.build_model('axial_deeplab_tiny')
    with pytest.raises(PyTorchCheckpointError, match='ImageNet classifiers'):
        load_pytorch_state_dict(panoptic, state)


def test_dataparallel_prefix_and_trainer_wrapper_are_removed(tmp_path, state, outputs):
    path = str(tmp_path / 'prefixed.npz')
    np.savez(path, **{f'module.{name}': value for name, value in state.items()})
    model = small_model()
    load_pytorch_checkpoint(model, path)
    assert relative_error(model(tf.constant(outputs['images']))['logits'], outputs['logits']) < TOLERANCE


def test_pth_through_torch(tmp_path, state, outputs):
    """A .pth as the official trainer saves it ({'net': DataParallel state dict, 'epoch': ...}); only with torch."""
    torch = pytest.importorskip('torch')
    path = str(tmp_path / 'axial26s_small.pth')
    torch.save({'net': {f'module.{k}': torch.from_numpy(np.array(v)) for k, v in state.items()}, 'epoch': 129},
               path)
    model = small_model()
    load_pytorch_checkpoint(model, path)
    assert relative_error(model(tf.constant(outputs['images']))['logits'], outputs['logits']) < TOLERANCE


def test_pth_without_torch_says_how_to_read_it(tmp_path, monkeypatch):
    path = tmp_path / 'weights.pth'
    path.write_bytes(b'not read')
    monkeypatch.setitem(__import__('sys').modules, 'torch', None)  # import torch fails
    with pytest.raises(PyTorchCheckpointError, match=r'needs torch .*numpy.savez'):
        read_state_dict(str(path))
    with pytest.raises(PyTorchCheckpointError, match='does not exist'):
        read_state_dict(str(tmp_path / 'absent.npz'))


@pytest.mark.parametrize('official', sorted(PYTORCH_MODELS))
def test_full_size_layout_has_the_official_parameters_and_names(official):
    """Our registry model in PYTORCH_LAYOUT at 224 has the official parameter count, and a state dict with every
    official name and shape (values drawn here) fills every variable with nothing left over."""
    with open(os.path.join(_DATA, 'axial_official_layouts.json')) as f:
        layout = json.load(f)[official]
    model = registry.build_model(PYTORCH_MODELS[official], **PYTORCH_LAYOUT)
    model.build((None, 224, 224, 3))
    assert sum(int(np.prod(v.shape)) for v in model.trainable_weights) == layout['parameters']
    rng = np.random.default_rng(0)
    state, tables = {}, {}
    for name, shape, dtype in layout['state_dict']:
        state[name] = np.zeros(shape, dtype) if dtype == 'int64' else rng.standard_normal(shape, np.float32)
        if name.endswith('.relative'):
            tables[name[:-len('relative')] + 'flatten_index'] = (shape[1] + 1) // 2
    for name, size in tables.items():
        state[name] = (np.arange(size)[:, None] - np.arange(size)[None, :] + size - 1).reshape(-1)
    assigned = load_pytorch_state_dict(model, state)
    assert len(assigned) == len(model.weights)
    assert official != 'axial26s' or len(layout['state_dict']) == 416


def test_new_layout_options_survive_keras_save_and_load(tmp_path, outputs):
    model = small_model()
    load_pytorch_checkpoint(model, STATE)
    path = str(tmp_path / 'model.keras')
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.input_normalization == 'imagenet'
    config = loaded.encoder.get_config()
    assert {name: config[name] for name in PYTORCH_LAYOUT if name in config} == {
        name: value for name, value in PYTORCH_LAYOUT.items() if name != 'input_normalization'} | dict(
        relative_table_input_size=64)
    assert relative_error(loaded(tf.constant(outputs['images']))['logits'], outputs['logits']) < TOLERANCE
