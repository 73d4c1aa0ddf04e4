"""One harness for every class registered with `register_keras_serializable(package='deeplab_axial')`.

As keras-hub's `run_layer_test` / `run_serialization_test`: each layer or model builds at an unknown batch size,
its `get_config()` survives JSON and rebuilds a layer with the same config and outputs, it has the expected numbers of
trainable and non-trainable variables, it takes one training step (every trainable variable gets a gradient, the
batch-norm statistics move) and it runs under a mixed-precision policy with float32 variables. Schedules and
optimizers get the same JSON round trip and identical updates.

The classes are discovered from the Keras registry after importing every module that registers one, so a class
added anywhere in `deeplab_axial/` or `trainer/` is picked up; a registered class without an entry below fails.
"""

import importlib
import json
import pathlib
from typing import Callable, Dict, NamedTuple, Optional, Sequence

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial import common

_ROOT = pathlib.Path(__file__).resolve().parent.parent
_PACKAGE = 'deeplab_axial'


def _registered_classes() -> Dict[str, type]:
    """{class name: class} of everything the project registers, after importing each module that registers one."""
    for path in sorted(list((_ROOT / 'deeplab_axial').rglob('*.py')) + list((_ROOT / 'trainer').rglob('*.py'))):
        if 'register_keras_serializable' in path.read_text():
            importlib.import_module('.'.join(path.relative_to(_ROOT).with_suffix('').parts))
    prefix = f'{_PACKAGE}>'
    return {key[len(prefix):]: cls for key, cls in keras.saving.get_custom_objects().items()
            if key.startswith(prefix)}


REGISTERED = _registered_classes()


class LayerCase(NamedTuple):
    """A small instance of a layer or model and what it must have.

    kwargs: constructor arguments. shapes: the build argument, batch None. inputs: the call's positional arguments
    from an rng (defaults to normal tensors of `shapes` at batch 2). weights: (trainable, non-trainable) variable
    counts, counted by hand. mixed_dtype: the outputs' dtype under mixed_float16. mixed_tolerance: allowed error
    relative to the largest float32 output.
    """
    kwargs: dict
    shapes: object
    weights: tuple
    mixed_dtype: str = 'float16'
    inputs: Optional[Callable] = None
    mixed_tolerance: float = 0.02


def _normal(shape, rng, batch=2):
    return tf.constant(rng.normal(size=(batch,) + tuple(shape[1:])).astype(np.float32))


def _moments(rng):
    mean = rng.normal(size=(2, 3)).astype(np.float32)
    mean_square = (mean ** 2 + rng.uniform(0.5, 1.5, mean.shape)).astype(np.float32)
    return ([(tf.constant(m), tf.constant(s)) for m, s in zip(mean, mean_square)],)


def _images(rng):
    return (tf.constant(rng.uniform(0, 255, (2, 17, 17, 3)).astype(np.float32)),)


def _branch_features(rng):
    return ([_normal(shape, rng) for shape in (_FEATURES[common.RES5], _FEATURES[common.RES3],
                                               _FEATURES[common.RES2])],)


def _fused_features(rng):
    return ([_normal(shape, rng) for shape in _FUSED],)


def _serialized_encoder(**kwargs) -> dict:
    """An encoder as models take it in their config (keras-hub style), built fresh by each model; without a dtype
    policy, so that it follows the policy in force when the model is built, as the model does."""
    from deeplab_axial.model.encoder.axial_resnet import AxialResNet
    serialized = keras.saving.serialize_keras_object(AxialResNet(name='encoder', **kwargs))
    del serialized['config']['dtype']
    return serialized


_ATTENTION = dict(num_heads=2, block_size=4)
_TINY_ENCODER = dict(stem='inception', width_multiplier=0.0625, stem_width_multiplier=0.125,
                     blocks_per_stage=[1, 1, 1, 1], output_stride=16, span=5, **_ATTENTION)
_TINY_DECODER = dict(semantic_aspp_channels=8, semantic_decoder_channels=8, semantic_low_level_projections=[4, 2],
                     semantic_head_channels=8, instance_aspp_channels=8, instance_decoder_channels=4,
                     instance_low_level_projections=[2, 2], center_head_channels=4, offset_head_channels=4)
_FEATURES = {common.RES2: (None, 9, 9, 4), common.RES3: (None, 5, 5, 8), common.RES5: (None, 3, 3, 16)}
# Per axis: qkv kernel, three relative tables and gamma/beta of three batch norms; their means/variances.
_AXIS = (10, 6)
# Conv + batch norm: kernel, gamma, beta; moving mean and variance.
_CONV_BN = (3, 2)
_SEPARABLE = (6, 4)
_BLOCK = (2 * _AXIS[0] + 3 * _CONV_BN[0], 2 * _AXIS[1] + 3 * _CONV_BN[1])  # conv1, conv3, shortcut, two axes
_BRANCH = (3 * _CONV_BN[0] + 2 * _SEPARABLE[0], 3 * _CONV_BN[1] + 2 * _SEPARABLE[1])
_DECODER = (2 * _BRANCH[0] + 3 * _SEPARABLE[0], 2 * _BRANCH[1] + 3 * _SEPARABLE[1])
# Inception stem (16 channels) and 4 blocks; res2's block keeps its 16 channels at stride 1: no shortcut conv.
_ENCODER = (2 * _CONV_BN[0] + 4 * _BLOCK[0], 2 * _CONV_BN[1] + 4 * _BLOCK[1])
# ResizedFuse to 5x5x8 of a 3x3x16 feature (1x1 conv, resize), a 9x9x4 one (strided 1x1 conv) and a 5x5x8 one (as is).
_FUSED = [(None, 3, 3, 16), (None, 9, 9, 4), (None, 5, 5, 8)]
# Switchable atrous conv + BN with global contexts (1x1 conv with bias) before and after: kernel, switch kernel and
# bias, two contexts, gamma, beta; a strided one has no switch.
_SAC_CONV_BN = (_CONV_BN[0] + 2 + 2 * 2, _CONV_BN[1])
_STRIDED_SAC_CONV_BN = (_CONV_BN[0] + 2 * 2, _CONV_BN[1])
# deeplab2's ResNet-50-Beta with axial blocks from stride 16: Inception stem; res2 bottleneck (16 -> 16 channels, no
# shortcut); res3 bottleneck with shortcut; res4 a strided bottleneck with shortcut and an axial block without; res5
# an axial block with shortcut.
_DEEPLAB2_ENCODER = tuple(3 * c + 3 * c + 4 * c + 4 * c + (2 * a + 2 * c) + (2 * a + 3 * c)
                          for c, a in zip(_CONV_BN, _AXIS))

LAYERS = {
    'AxialAttention': LayerCase(dict(total_key_depth=8, total_value_depth=8, span=5, **_ATTENTION), (None, 11, 6),
                                _AXIS),
    'AxialAttention2D': LayerCase(dict(filters=4, span=[None, 3], strides=2, **_ATTENTION), (None, 7, 9, 5),
                                  (2 * _AXIS[0], 2 * _AXIS[1])),
    'AxialBlock': LayerCase(dict(filters=4, strides=2, span=5, drop_path_keep_prob=0.8, **_ATTENTION),
                            (None, 9, 11, 6), _BLOCK),
    'DropPath': LayerCase(dict(keep_prob=0.7), (None, 5, 5, 3), (0, 0)),
    'ConvBN': LayerCase(dict(filters=6, kernel_size=3, strides=2), (None, 9, 9, 4), _CONV_BN),
    'DepthwiseSeparableConv': LayerCase(dict(filters=6, kernel_size=5), (None, 9, 9, 4), _SEPARABLE),
    'FusedBatchNormalization': LayerCase(dict(momentum=0.9), (None, 7, 5), (2, 2)),
    # Statistics in float32 whatever the policy, as AxialAttention builds it.
    'TermBatchNormalization': LayerCase(dict(num_terms=2, channels=3, momentum=0.9, dtype='float32'), None, (2, 2),
                                        mixed_dtype='float32', inputs=_moments),
    'PanopticDeepLabBranch': LayerCase(
        dict(channels=8, low_level_projections=[4, 2], fusion_channels=6),
        [_FEATURES[common.RES5], _FEATURES[common.RES3], _FEATURES[common.RES2]], _BRANCH,
        inputs=_branch_features),
    'PanopticDeepLabDecoder': LayerCase(_TINY_DECODER, _FEATURES, _DECODER),
    # Kernel and bias of the center and offset convs, float32 under mixed precision.
    'InstanceLastLayers': LayerCase({}, [(None, 5, 5, 3), (None, 5, 5, 4)], (4, 0), mixed_dtype='float32'),
    'AxialResNet': LayerCase(_TINY_ENCODER, (None, 17, 17, 3), _ENCODER, mixed_tolerance=0.05),
    'AxialDeepLab': LayerCase(
        dict(num_classes=3, encoder=_serialized_encoder(**_TINY_ENCODER), decoder_config=_TINY_DECODER),
        (None, 17, 17, 3),
        (_ENCODER[0] + _DECODER[0] + 2 + 4, _ENCODER[1] + _DECODER[1]), mixed_dtype='float32', inputs=_images,
        mixed_tolerance=0.05),
    'AxialResNetClassifier': LayerCase(
        dict(num_classes=5, encoder=_serialized_encoder(**dict(_TINY_ENCODER, stem='conv', stem_pool=True)),
             dropout_rate=0.2),
        (None, 17, 17, 3), (_CONV_BN[0] + 4 * _BLOCK[0] + 2, _CONV_BN[1] + 4 * _BLOCK[1]),  # 8-channel stem
        mixed_dtype='float32', inputs=_images, mixed_tolerance=0.05),
    # deeplab2's encoder family and its layers.
    'SwitchableAtrousConv2D': LayerCase(dict(filters=6, kernel_size=3, atrous_rate=2), (None, 9, 9, 4), (3, 0)),
    'GlobalContext': LayerCase({}, (None, 5, 5, 4), (2, 0)),
    'SqueezeAndExcite': LayerCase({}, (None, 5, 5, 4), (2, 0)),
    'InceptionStem': LayerCase(dict(width_multiplier=0.125, activation='gelu'), (None, 9, 9, 3),
                               (3 * _CONV_BN[0], 3 * _CONV_BN[1])),
    # A strided basic block with switchable atrous convolutions, squeeze-and-excitation (kernel, bias) and a
    # shortcut conv, in deeplab2's activation order.
    'ConvBlock': LayerCase(dict(filters=[8, 8], strides=2, use_sac=True, use_squeeze_and_excite=True,
                                drop_path_keep_prob=0.8, activate_input=True), (None, 9, 9, 4),
                           (_STRIDED_SAC_CONV_BN[0] + _SAC_CONV_BN[0] + _CONV_BN[0] + 2,
                            _STRIDED_SAC_CONV_BN[1] + _SAC_CONV_BN[1] + _CONV_BN[1])),
    'ResizedFuse': LayerCase(dict(height=5, width=5, channels=8), _FUSED, (2 * _CONV_BN[0], 2 * _CONV_BN[1]),
                             inputs=_fused_features),
    'DeepLab2AxialResNet': LayerCase(
        dict(backbone_type='resnet_beta', width_multiplier=0.0625, stem_width_multiplier=0.125,
             blocks_per_stage=[1, 1, 2, 1], span=5, **_ATTENTION), (None, 17, 17, 3), _DEEPLAB2_ENCODER,
        mixed_tolerance=0.05),
}


def _schedule():
    from trainer.optimizer_builder import LinearWarmUp
    return LinearWarmUp(0.1, keras.optimizers.schedules.PolynomialDecay(0.1, 100, 0.001), 10)


def _radam():
    from trainer.optimizer_builder import RAdam
    return RAdam(0.01, beta_2=0.99, sma_threshold=4.0)


def _lookahead():
    from trainer.optimizer_builder import Lookahead
    return Lookahead(keras.optimizers.SGD(0.1, momentum=0.5), sync_period=2, slow_step_size=0.5)


# Schedules and optimizers: a factory, and for optimizers their variable count on two model variables.
OPTIMIZER_OBJECTS = {
    'LinearWarmUp': (_schedule, None),
    # Step counter, learning rate, momentum and velocity per variable.
    'RAdam': (_radam, 2 + 2 * 2),
    # Own step counter and learning rate, a slow copy per variable, then the inner SGD's counter, rate, momenta.
    'Lookahead': (_lookahead, 2 + 2 + 2 + 2),
}

_UNCOVERED = sorted(set(REGISTERED) - set(LAYERS) - set(OPTIMIZER_OBJECTS))


def test_every_registered_class_is_in_the_harness():
    assert 'AxialAttention' in REGISTERED and 'RAdam' in REGISTERED  # discovery works
    assert not _UNCOVERED, (f'registered classes without a harness entry in {__file__}: {_UNCOVERED}; add each to '
                            'LAYERS or OPTIMIZER_OBJECTS')
    assert not (set(LAYERS) | set(OPTIMIZER_OBJECTS)) - set(REGISTERED), 'entries for classes no longer registered'


def _inputs(case: LayerCase, rng) -> Sequence:
    """The call's positional arguments: `case.inputs`, else normal tensors of the shapes (a list: one each)."""
    if case.inputs is not None:
        return case.inputs(rng)
    if isinstance(case.shapes, dict):
        return ({key: _normal(shape, rng) for key, shape in case.shapes.items()},)
    if isinstance(case.shapes, list):
        return tuple(_normal(shape, rng) for shape in case.shapes)
    return (_normal(case.shapes, rng),)


def _built(name: str, case: LayerCase, kwargs: Optional[dict] = None):
    layer = REGISTERED[name](**(case.kwargs if kwargs is None else kwargs))
    layer.build(case.shapes)
    return layer


def _call(layer, inputs, training=False):
    return [tf.convert_to_tensor(t) for t in tf.nest.flatten(layer(*inputs, training=training))]


def _randomize(layer, rng):
    """Non-trivial batch norms (zero-initialised gammas would hide half of a block, unit moving statistics the
    difference between the batch's and the moving ones); the kernels keep their variance-preserving init."""
    for variable in layer.weights:
        name = variable.path.split('/')[-1]
        if name in ('gamma', 'moving_variance'):
            variable.assign(rng.uniform(0.5, 1.5, tuple(variable.shape)).astype(np.float32))
        elif name in ('beta', 'moving_mean'):
            variable.assign(rng.uniform(-0.5, 0.5, tuple(variable.shape)).astype(np.float32))


def _layer_case(name: str) -> LayerCase:
    if name not in LAYERS:
        pytest.fail(f'{name} has no entry in LAYERS of {__file__}')
    return LAYERS[name]


def _randomized(name: str, rng):
    """The case of `name`, its layer built with non-trivial batch norms, and its inputs."""
    case = _layer_case(name)
    layer = _built(name, case)
    _randomize(layer, rng)
    return case, layer, _inputs(case, rng)


_LAYER_NAMES = sorted(set(REGISTERED) - set(OPTIMIZER_OBJECTS))


@pytest.mark.parametrize('name', _LAYER_NAMES)
def test_build_and_variable_counts(name):
    case = _layer_case(name)
    layer = _built(name, case)
    assert layer.built
    assert (len(layer.trainable_weights), len(layer.non_trainable_weights)) == case.weights
    assert all(v.dtype == 'float32' for v in layer.weights)


@pytest.mark.parametrize('name', _LAYER_NAMES)
def test_config_survives_json_with_the_same_outputs(name, rng):
    case, layer, inputs = _randomized(name, rng)
    config = layer.get_config()
    clone = REGISTERED[name].from_config(json.loads(json.dumps(config)))
    clone.build(case.shapes)
    assert clone.get_config() == config
    clone.set_weights(layer.get_weights())
    for got, expected in zip(_call(clone, inputs), _call(layer, inputs)):
        np.testing.assert_array_equal(got.numpy(), expected.numpy())
    # The registered name too: Keras' own serialisation, through JSON.
    restored = keras.saving.deserialize_keras_object(json.loads(json.dumps(keras.saving.serialize_keras_object(layer))))
    assert type(restored) is type(layer) and restored.get_config() == config


@pytest.mark.parametrize('name', _LAYER_NAMES)
def test_one_training_step(name, rng):
    _, layer, inputs = _randomized(name, rng)
    before = [v.numpy().copy() for v in layer.weights]
    with tf.GradientTape() as tape:
        outputs = _call(layer, inputs, training=True)
        loss = tf.add_n([tf.reduce_sum(tf.cast(t, tf.float32) * rng.normal(size=t.shape).astype(np.float32))
                         for t in outputs])
    gradients = tape.gradient(loss, layer.trainable_weights)
    missing = [v.path for v, g in zip(layer.trainable_weights, gradients) if g is None]
    assert not missing, f'no gradient for {missing}'
    keras.optimizers.SGD(0.1).apply(gradients, layer.trainable_weights)
    assert np.isfinite(float(loss))
    changed = {v.path: not np.array_equal(v.numpy(), old) for v, old in zip(layer.weights, before)}
    if layer.trainable_weights:
        assert any(changed[v.path] for v in layer.trainable_weights)
    still = [v.path for v in layer.non_trainable_weights if not changed[v.path]]
    assert not still, f'batch-norm statistics not updated in training: {still}'


@pytest.mark.parametrize('name', _LAYER_NAMES)
def test_mixed_precision(name, rng):
    case, reference, inputs = _randomized(name, rng)
    expected = _call(reference, inputs)
    keras.config.set_dtype_policy('mixed_float16')
    try:
        layer = _built(name, case)
        layer.set_weights(reference.get_weights())
        got = _call(layer, inputs)
        _call(layer, inputs, training=True)
    finally:
        keras.config.set_dtype_policy('float32')
    assert all(v.dtype == 'float32' for v in layer.weights)
    for g, e in zip(got, expected):
        assert g.dtype == case.mixed_dtype
        e = e.numpy()
        np.testing.assert_allclose(tf.cast(g, tf.float32).numpy(), e,
                                   atol=case.mixed_tolerance * max(np.abs(e).max(), 1e-3))


def _optimizer_case(name: str):
    if name not in OPTIMIZER_OBJECTS:
        pytest.fail(f'{name} has no entry in OPTIMIZER_OBJECTS of {__file__}')
    return OPTIMIZER_OBJECTS[name]


def _steps(optimizer, steps=4):
    variables = [keras.Variable(np.array([1.0, -2.0], np.float32)), keras.Variable(np.array([[0.5]], np.float32))]
    for step in range(steps):
        gradients = [tf.constant([0.3 + step, -0.1], tf.float32), tf.constant([[0.2 * step - 0.5]], tf.float32)]
        optimizer.apply(gradients, variables)
    return [v.numpy() for v in variables]


@pytest.mark.parametrize('name', sorted(OPTIMIZER_OBJECTS))
def test_schedules_and_optimizers_survive_json(name):
    factory, variable_count = _optimizer_case(name)
    original = factory()
    serialized = json.loads(json.dumps(keras.saving.serialize_keras_object(original)))
    clone = keras.saving.deserialize_keras_object(serialized)
    assert type(clone) is type(original)
    if variable_count is None:  # a schedule
        for step in (0, 5, 10, 60):
            assert float(clone(step)) == pytest.approx(float(original(step)), rel=1e-7)
        assert float(original(5)) == pytest.approx(0.05)  # warm-up: 5 / 10 of 0.1
        return
    np.testing.assert_array_equal(np.concatenate([x.ravel() for x in _steps(clone)]),
                                  np.concatenate([x.ravel() for x in _steps(original)]))
    assert len(original.variables) == variable_count
    scaled = keras.optimizers.LossScaleOptimizer(factory())
    after = _steps(scaled, steps=2)
    assert all(np.isfinite(x).all() for x in after)
