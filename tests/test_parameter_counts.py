"""The exact parameter count of every registered model name, pinned, and checked against a count by hand.

`PINNED` holds the count (trainable + batch-norm statistics) of each name in `registry.model_names()`; a name added
to the registry without an entry here fails. The hand count below is written from the architecture (Axial-DeepLab
§3.2, deeplab2's layer layout), not from our layers: it reproduces deeplab2's own golden counts of its four Axial
instances, and then every pinned number.
"""

import json
import os
import subprocess
import sys
from typing import Optional, Sequence, Tuple

import pytest

from deeplab_axial.model import registry

PINNED = {
    'axial_deeplab_l': 45469446,
    'axial_deeplab_m': 26361574,
    'axial_deeplab_s': 12471494,
    'axial_deeplab_tiny': 752630,
    'axial_deeplab_xl': 174078854,
    'axial_resnet_26_s': 6424296,
    'axial_resnet_l': 45938536,
    'axial_resnet_m': 26653576,
    'axial_resnet_s': 12569512,
    'axial_resnet_xl': 175087336,
    'full_axial_resnet_26_s': 6477912,
    'full_axial_resnet_l': 46102536,
    'full_axial_resnet_m': 26755216,
    'full_axial_resnet_s': 12623128,
    'full_axial_resnet_xl': 175644136,
    # deeplab2's encoder family with Panoptic-DeepLab (19 classes). Their encoders' trainable counts are deeplab2's own
    # golden counts, and the axial_swidernet and max_deeplab_*_backbone models deeplab2's whole-model counts of its
    # Cityscapes configs (tests/test_deeplab2_family.py).
    'axial_resnet50': 42939462,
    'axial_swidernet': 138044422,
    'max_deeplab_l_backbone': 176813254,
    'max_deeplab_s_backbone': 42939462,
    'resnet50': 25012806,
    'resnet50_beta': 25136966,
    'swidernet': 110524486,
    'wide_resnet41': 110524486,
}

# --- The hand count: (trainable, batch-norm statistics) per part. ---
_TABLE_ROWS = 2 * 255 - 1  # relative tables of deeplab2's MAX_SPAN 255
Count = Tuple[int, int]


def _add(*counts: Count) -> Count:
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _bn(channels: int) -> Count:
    return 2 * channels, 2 * channels  # gamma, beta; moving mean, variance


def _conv_bn(cin: int, cout: int, kernel: int = 1) -> Count:
    return _add((kernel * kernel * cin * cout, 0), _bn(cout))


def _separable(cin: int, cout: int) -> Count:
    """5x5 depthwise conv + BN, 1x1 conv + BN (Panoptic-DeepLab's fusion and head conv)."""
    return _add((25 * cin, 0), _bn(cin), _conv_bn(cin, cout))


def _axis(cin: int, key: int, value: int, heads: int) -> Count:
    """One attention axis: qkv projection + BN, r^q and r^k [rows, key/heads], r^v [rows, value/heads], BN per
    (similarity term, head) for three terms and per (retrieved term, channel) for two."""
    qkv = 2 * key + value
    return _add((cin * qkv, 0), _bn(qkv), (_TABLE_ROWS * (2 * key + value) // heads, 0), _bn(3 * heads),
                _bn(2 * value))


def _block(cin: int, f: int, stride: int, heads: int, project_strided: bool) -> Count:
    """Bottleneck: 1x1 -> 2f, height and width axes (Dk f, Dv 2f), 1x1 -> 4f, and a 1x1 shortcut when the channels
    change (or the stride does, unless deeplab2's subsampled shortcut)."""
    parts = [_conv_bn(cin, 2 * f), _axis(2 * f, f, 2 * f, heads), _axis(2 * f, f, 2 * f, heads), _conv_bn(2 * f, 4 * f)]
    if cin != 4 * f or (stride != 1 and project_strided):
        parts.append(_conv_bn(cin, 4 * f))
    return _add(*parts)


def _scaled(channels: int, multiplier: float) -> int:
    return max(1, int(round(channels * multiplier)))


def hand_count_encoder(stem: str, width: float, stem_width: float, blocks: Sequence[int], stem_pool: bool = True,
                       heads: int = 8, project_strided: bool = True) -> Tuple[Count, int]:
    """The Axial-ResNet encoder's count and its res5 channels."""
    if stem == 'conv':
        parts, channels = [_conv_bn(3, _scaled(64, stem_width), 7)], _scaled(64, stem_width)
    elif stem == 'inception':
        c64, c128 = _scaled(64, stem_width), _scaled(128, stem_width)
        parts, channels = [_conv_bn(3, c64, 3), _conv_bn(c64, c64, 3), _conv_bn(c64, c128, 3)], c128
    else:  # three axial blocks of width 32, the first strided
        f = _scaled(32, stem_width)
        parts, channels = [], 3
        for i in range(3):
            parts.append(_block(channels, f, 2 if i == 0 else 1, heads, project_strided))
            channels = 4 * f
    for stage, count in enumerate(blocks):
        f = _scaled(64 * 2 ** stage, width)
        stride = (1 if stem_pool else 2) if stage == 0 else 2  # res5's stride does not change the count
        for i in range(count):
            parts.append(_block(channels, f, stride if i == 0 else 1, heads, project_strided))
            channels = 4 * f
    return _add(*parts), channels


def _branch(res5: int, res3: int, res2: int, aspp: int, low_level: Sequence[int], fusion: int) -> Count:
    """1x1 projection of res5, then res3 and res2 each projected, concatenated and fused by a separable conv."""
    return _add(_conv_bn(res5, aspp), _conv_bn(res3, low_level[0]), _separable(aspp + low_level[0], fusion),
                _conv_bn(res2, low_level[1]), _separable(fusion + low_level[1], fusion))


def hand_count(encoder: dict, task: str, num_classes: int, decoder: Optional[dict] = None) -> int:
    """Total parameters of a registered model from its encoder arguments (the paper's decoder widths by default)."""
    (trainable, statistics), res5 = hand_count_encoder(
        encoder['stem'], encoder['width_multiplier'], encoder['stem_width_multiplier'], encoder['blocks_per_stage'],
        encoder.get('stem_pool', True), encoder.get('num_heads', 8), encoder.get('project_strided_shortcut', True))
    if task == 'classification':
        return trainable + statistics + res5 * num_classes + num_classes
    # Panoptic-DeepLab: semantic 256 / (64, 32) / 256 with a 256 head; instance 256 / (32, 16) / 128 with 32-wide
    # center and offset heads; 1x1 last layers with bias.
    widths = dict(semantic=(256, (64, 32), 256), instance=(256, (32, 16), 128), semantic_head=256, instance_head=32)
    assert not decoder, 'the registered models use the paper decoder'
    f = [_scaled(64 * 2 ** s, encoder['width_multiplier']) for s in range(4)]
    res2, res3 = 4 * f[0], 4 * f[1]
    semantic_fusion, instance_fusion = widths['semantic'][2], widths['instance'][2]
    decoder_count = _add(_branch(res5, res3, res2, *widths['semantic']), _branch(res5, res3, res2, *widths['instance']),
                         _separable(semantic_fusion, widths['semantic_head']),
                         _separable(instance_fusion, widths['instance_head']),
                         _separable(instance_fusion, widths['instance_head']))
    last = (widths['semantic_head'] + 1) * num_classes + (widths['instance_head'] + 1) * 3
    return trainable + statistics + sum(decoder_count) + last


# deeplab2's golden counts (axial_resnet_instances_test.py): trainable variables of the encoder alone, in deeplab2's
# layout (64/128-channel stems at every width, no max-pool, subsampled strided shortcuts).
@pytest.mark.parametrize('stem, width, expected', [
    ('conv', 0.5, 11466912), ('conv', 1.0, 43714048), ('inception', 0.5, 11565856), ('inception', 1.0, 43841920)])
def test_hand_count_reproduces_deeplab2(stem, width, expected):
    (trainable, _), _ = hand_count_encoder(stem, width, 1.0, [3, 4, 6, 3], stem_pool=False, project_strided=False)
    assert trainable == expected


def _variant(name: str) -> dict:
    """The registered model's arguments, from the unbuilt model's config."""
    model = registry.build_model(name)
    config = model.get_config()
    return dict(encoder=config['encoder']['config'], task=registry.model_task(name), num_classes=config['num_classes'],
                decoder=config.get('decoder_config'))


# The Axial-ResNet / Axial-DeepLab names, which the hand count covers.
HAND_COUNTED = sorted(n for n in PINNED if n.startswith(('axial_resnet_', 'full_axial_resnet_', 'axial_deeplab_')))


@pytest.mark.parametrize('name', HAND_COUNTED)
def test_pinned_counts_equal_the_hand_count(name):
    variant = _variant(name)
    assert hand_count(variant['encoder'], variant['task'], variant['num_classes'], variant['decoder']) == PINNED[name]


# Built without allocating (Keras defers variable initialisation in a stateless scope), in a subprocess so that the
# deferred variables of 0.8 billion parameters never reach this process.
_BUILD_ALL = '''
import json, sys
import keras, numpy as np
from deeplab_axial.model import registry
counts = {}
for name in registry.model_names():
    with keras.StatelessScope(initialize_variables=False):
        model = registry.build_model(name)
        model.build((None, 65, 65, 3))
    counts[name] = sum(int(np.prod(v.shape)) for v in model.weights)
print(json.dumps(counts))
'''


@pytest.fixture(scope='module')
def built_counts():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get('PYTHONPATH', '')]))
    result = subprocess.run([sys.executable, '-c', _BUILD_ALL], capture_output=True, text=True, timeout=600, env=env,
                            cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('name', registry.model_names())
def test_every_registered_name_has_its_pinned_count(name, built_counts):
    assert name in PINNED, f'{name} is registered but has no pinned parameter count in {__file__}'
    assert built_counts[name] == PINNED[name]


def test_no_pinned_name_is_stale():
    assert not set(PINNED) - set(registry.model_names())
