"""deeplab2's encoder family (`DeepLab2AxialResNet`) against deeplab2 itself: its five Cityscapes Axial-DeepLab configs,
their parameter counts, checkpoints and outputs; its ImageNet encoders as initial checkpoints (Model Garden layout
included); deeplab2's global attention up to query_shape 129; and a few training steps on each new encoder.

The files under tests/data/deeplab2 were written by deeplab2 (tf-keras, commit 64bc1c1; make_family_fixtures.py
there): its configs' canonical text, parameter counts and drop-path probabilities at full size, and reduced-width
models with random weights.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from deeplab2_fingerprints import fingerprint, gradient_projection
from deeplab_axial import common, config_utils
from deeplab_axial.data import dataset, synthetic, targets
from deeplab_axial.data.build_coco_data import coco_id_mapping
from deeplab_axial.model import builder, deeplab2_checkpoint, registry
from deeplab_axial.model.deeplab import AxialDeepLab, AxialResNetClassifier
from deeplab_axial.model.encoder.deeplab2_axial_resnet import BACKBONE_OUTPUT, DeepLab2AxialResNet
from deeplab_axial.model.layers.axial_attention import AxialAttention
from deeplab_axial.model.loss.panoptic_deeplab_loss import PanopticDeepLabLoss
from deeplab_axial.protos import config_pb2
from trainer import checkpoint_utils, train_step

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DATA = os.path.join(_REPO, 'tests', 'data', 'deeplab2')
_CONFIGS = os.path.join(_REPO, 'configs', 'cityscapes', 'axial_deeplab')
with open(os.path.join(_DATA, 'cityscapes_configs.json')) as _f:
    _DEEPLAB2_CONFIGS = json.load(_f)
# The panoptic fixtures and the shipped config whose recipe they reduce.
_PANOPTIC = {'axial_swidernet': 'axial_swidernet_1_1_1_os16', 'max_deeplab_s_backbone': 'max_deeplab_s_backbone_os16',
             'max_deeplab_l_backbone': 'max_deeplab_l_backbone_os16'}
_ENDPOINTS = (common.RES2, common.RES3, common.RES4, common.RES5, BACKBONE_OUTPUT)
_OUTPUTS = {'semantic_logits': common.PRED_SEMANTIC_LOGITS_KEY, 'center_heatmap': common.PRED_CENTER_HEATMAP_KEY,
            'offset_map': common.PRED_OFFSET_MAP_KEY}


def _relative_error(got, expected) -> float:
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


def _outputs(name: str):
    return np.load(os.path.join(_DATA, name, 'outputs.npz'))


def _prefix(name: str) -> str:
    return os.path.join(_DATA, name, 'ckpt-1')


def _shipped(stem: str) -> config_pb2.ExperimentOptions:
    """A shipped config, parsed as text (no placeholder filling), to compare with deeplab2's."""
    with open(os.path.join(_CONFIGS, f'{stem}.textproto')) as f:
        return text_format.Parse(f.read(), config_pb2.ExperimentOptions())


def _fixture_config(name: str, initial_checkpoint: str = '') -> config_pb2.ExperimentOptions:
    """The shipped config with the fixture's model_options (what deeplab2 built the fixture from)."""
    config = config_utils.load_config(os.path.join(_CONFIGS, f'{_PANOPTIC[name]}.textproto'), allow_unfilled=True)
    config.model_options.Clear()
    with open(os.path.join(_DATA, name, 'model_options.textproto')) as f:
        text_format.Parse(f.read(), config.model_options)
    config.model_options.initial_checkpoint = initial_checkpoint
    return config


@pytest.mark.parametrize('stem', sorted(_DEEPLAB2_CONFIGS))
def test_shipped_configs_hold_deeplab2s_field_values(stem):
    """Our five Cityscapes configs (our files, our comments) set exactly the fields deeplab2's set, to the same values:
    the canonical text of both parses is equal."""
    assert text_format.MessageToString(_shipped(stem)) == _DEEPLAB2_CONFIGS[stem]['config']


@pytest.mark.parametrize('stem', sorted(_DEEPLAB2_CONFIGS))
def test_shipped_configs_build_deeplab2s_network(stem):
    """Whole Panoptic-DeepLab from each config, unchanged: trainable and non-trainable parameter counts equal those of
    the model deeplab2 builds from its config, and every block's drop-path keep probability equals deeplab2's.
    Built without initialising the 43M-572M values (keras.StatelessScope)."""
    config = config_utils.load_config(os.path.join(_CONFIGS, f'{stem}.textproto'), allow_unfilled=True)
    expected = _DEEPLAB2_CONFIGS[stem]
    with keras.StatelessScope():
        model = builder.build_model(config, config_utils.validate(config)['train'])
        model.build((None, 65, 65, 3))
    count = lambda variables: sum(int(np.prod(v.shape)) for v in variables)  # noqa: E731
    assert (count(model.trainable_weights), count(model.non_trainable_weights)) == \
        (expected['trainable'], expected['non_trainable'])
    ours = {}
    for block in model.encoder._flatten_layers(include_self=False, recursive=False):
        group, _, index = block.name.rpartition('_block')
        if index.isdigit():
            ours.setdefault(group.replace('res', 'stage'), []).append(block.drop_path_keep_prob)
    assert ours.keys() == expected['keep_probabilities'].keys()
    for group, keeps in expected['keep_probabilities'].items():
        np.testing.assert_allclose(ours[group], keeps, rtol=1e-6, err_msg=group)


@pytest.mark.parametrize('name', sorted(_PANOPTIC))
def test_panoptic_models_reproduce_deeplab2(name):
    """A deeplab2 checkpoint of the whole model (every item; max_deeplab_s_backbone's also holds the step and the
    optimizer's slots) through the config's initial_checkpoint: encoder endpoints and the three heads equal deeplab2's
    in inference and in training mode."""
    expected = _outputs(name)
    config = _fixture_config(name, _prefix(name))
    model = builder.build_model(config, config_utils.validate(config)['train'])
    model.build((None,) + expected['images'].shape[1:])
    checkpoint_utils.make_init_fn(config.model_options, model.checkpoint_items)()
    images = tf.constant(expected['images'])
    features = model.encoder(images / 127.5 - 1.0, training=False)
    errors = {key: _relative_error(features[key], expected[key]) for key in _ENDPOINTS if key in expected}
    inference = model(images, training=False)
    training = model(images, training=True)
    for theirs, ours in _OUTPUTS.items():
        errors[theirs] = _relative_error(inference[ours], expected[theirs])
        errors[f'train_{theirs}'] = _relative_error(training[ours], expected[f'train_{theirs}'])
    print(name, errors)
    assert max(errors.values()) < 1e-3, errors
