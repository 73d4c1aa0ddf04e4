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
from keras.src.backend.common import global_state
import pytest
import tensorflow as tf
from google.protobuf import text_format

from deeplab2_fingerprints import fingerprint_errors
from deeplab_axial import common, config_utils
from deeplab_axial.data import dataset, synthetic, targets
from deeplab_axial.data.build_coco_data import coco_id_mapping
from deeplab_axial.inference import model_loader
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
# Largest |ours - deeplab2| over the largest |deeplab2|: measured at most 4e-5 (float32 rounding through the random
# attention layers; the conv stages agree exactly); a wrong padding, block order or rate gives 0.1 or more.
_TOLERANCE = 1e-4
# The ImageNet encoder fixtures: registry name and our arguments for deeplab2's (widths, its layer multiplier's
# truncated block counts, and what its block_group_config set).
_ENCODERS = {
    'resnet50': ('resnet50', dict(width_multiplier=0.0625, stem_width_multiplier=0.125, blocks_per_stage=[1, 2, 3, 1],
                                  output_stride=16)),
    'swidernet_sac': ('swidernet', dict(width_multiplier=0.03125, stem_width_multiplier=0.125,
                                        blocks_per_stage=[1, 2, 1, 1], output_stride=16, use_squeeze_and_excite=True,
                                        use_sac_beyond_stride=4, drop_path_keep_prob=1.0)),
    'axial_resnet50': ('axial_resnet50', dict(width_multiplier=0.03125, stem_width_multiplier=0.125,
                                              blocks_per_stage=[1, 2, 3, 1])),
}


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


def _built_without_values(make_model):
    """make_model() built at 65x65 with every variable shaped but given no value (drawing the 43M-572M values of the
    full-size models takes a minute)."""
    pending = global_state.get_global_attribute('uninitialized_variables', [], set_to_default=True)
    known = len(pending)
    try:
        # Keras would draw the values when the stateless scope closes unless told not to.
        with keras.StatelessScope(initialize_variables=False):
            model = make_model()
            model.build((None, 65, 65, 3))
    finally:
        del pending[known:]  # So that no later stateless scope draws them.
    return model


def _count(variables) -> int:
    return sum(int(np.prod(v.shape)) for v in variables)


# deeplab2's golden trainable counts of its encoders (model/encoder/axial_resnet_instances_test.py, no head), by
# name and layer multiplier.
_DEEPLAB2_ENCODER_COUNTS = [
    ('resnet50', 1, 23508032), ('resnet50_beta', 1, 23631808), ('max_deeplab_s_backbone', 1, 41343424),
    ('max_deeplab_l_backbone', 1, 175115392), ('swidernet', 1, 109014080), ('swidernet', 3, 333245504),
    ('swidernet', 4.5, 487453760), ('axial_swidernet', 1, 136399392), ('axial_swidernet', 3, 393935520),
    ('axial_swidernet', 4.5, 570346912)]


@pytest.mark.parametrize('name, layers, expected', _DEEPLAB2_ENCODER_COUNTS)
def test_encoders_have_deeplab2s_golden_parameter_counts(name, layers, expected):
    blocks = [int(b * layers) for b in registry.entry(name).encoder_args['blocks_per_stage']]
    model = _built_without_values(lambda: registry.build_model(name, blocks_per_stage=blocks))
    assert _count(model.encoder.trainable_weights) == expected


@pytest.mark.parametrize('stem', sorted(_DEEPLAB2_CONFIGS))
def test_shipped_configs_hold_deeplab2s_field_values(stem):
    """Our five Cityscapes configs (our files, our comments) set exactly the fields deeplab2's set, to the same values:
    the canonical text of both parses is equal."""
    assert text_format.MessageToString(_shipped(stem)) == _DEEPLAB2_CONFIGS[stem]['config']


@pytest.mark.parametrize('stem', sorted(_DEEPLAB2_CONFIGS))
def test_shipped_configs_build_deeplab2s_network(stem):
    """Whole Panoptic-DeepLab from each config, unchanged: trainable and non-trainable parameter counts equal those of
    the model deeplab2 builds from its config, and every block's drop-path keep probability equals deeplab2's."""
    config = config_utils.load_config(os.path.join(_CONFIGS, f'{stem}.textproto'), allow_unfilled=True)
    expected = _DEEPLAB2_CONFIGS[stem]
    model = _built_without_values(lambda: builder.build_model(config, config_utils.validate(config)['train']))
    assert (_count(model.trainable_weights), _count(model.non_trainable_weights)) == \
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
    assert max(errors.values()) < _TOLERANCE, errors


def test_evaluation_and_export_load_a_deeplab2_training_checkpoint():
    """model_loader (evaluation, export, prediction) takes deeplab2's checkpoint of the whole model, as its trainer
    wrote it (global step, optimizer and its per-variable slots beside the model's items)."""
    name = 'max_deeplab_s_backbone'
    expected = _outputs(name)
    assert any('.OPTIMIZER_SLOT' in key for key, _ in tf.train.list_variables(_prefix(name)))
    config = _fixture_config(name)
    config.eval_dataset_options.ClearField('crop_size')
    config.eval_dataset_options.crop_size.extend(expected['images'].shape[1:3])
    loaded = model_loader.load_model(config, _prefix(name))
    outputs = loaded.model(tf.constant(expected['images']), training=False)
    assert _relative_error(outputs[common.PRED_SEMANTIC_LOGITS_KEY], expected['semantic_logits']) < _TOLERANCE


@pytest.mark.parametrize('name', ['axial_swidernet', 'max_deeplab_s_backbone'])
def test_training_gradients_match_deeplab2(name):
    """Training-mode gradients of every trainable variable against deeplab2's fingerprints (as
    test_deeplab2_agreement: a missing or wrong gradient path moves them by 100%, float32 noise by a few %)."""
    expected = _outputs(name)
    config = _fixture_config(name)
    model = builder.build_model(config, config_utils.validate(config)['train'])
    model.build((None,) + expected['images'].shape[1:])
    keys = deeplab2_checkpoint.load_deeplab2_checkpoint(model.checkpoint_items, _prefix(name))
    errors = fingerprint_errors(model, keys, expected, _OUTPUTS)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 0.15, (worst, errors[worst])


def _encoder(fixture: str, **overrides) -> DeepLab2AxialResNet:
    name, arguments = _ENCODERS[fixture]
    expected = _outputs(fixture)
    model = registry.build_model(name, **dict(arguments, **overrides))
    model.build((None,) + expected['pixels'].shape[1:])
    return model.encoder


def _encoder_errors(encoder, expected, prefix: str = '') -> dict:
    images = tf.constant(expected['pixels'], tf.float32) / 127.5 - 1.0
    features = encoder(images, training=prefix == 'train_')
    return {prefix + key: _relative_error(features[key], expected[prefix + key]) for key in _ENDPOINTS
            if prefix + key in expected}


@pytest.mark.parametrize('fixture', sorted(_ENCODERS))
def test_imagenet_encoders_reproduce_deeplab2(fixture):
    """deeplab2's ImageNet encoders: ResNet-50 at output stride 16 (atrous bottlenecks), SWideRNet with SE and SAC
    written under Model Garden's backbone/_encoder/ beside a classification head, the GeLU Axial-ResNet-50."""
    expected = _outputs(fixture)
    encoder = _encoder(fixture)
    assigned = deeplab2_checkpoint.load_deeplab2_checkpoint({common.CKPT_ENCODER: encoder}, _prefix(fixture))
    assert len(assigned) == len(encoder.weights)
    scope = 'backbone/_encoder' if fixture == 'swidernet_sac' else 'encoder'
    assert {key.split('/_stage')[0].split('/_stem')[0] for key in assigned.values()} == {scope}
    errors = _encoder_errors(encoder, expected)
    if 'train_res5' in expected:
        errors.update(_encoder_errors(encoder, expected, 'train_'))
    assert max(errors.values()) < _TOLERANCE, errors


def test_model_garden_imagenet_checkpoint_initialises_the_encoder_only():
    """deeplab2's trainer reads initial checkpoints whose encoder sits under backbone/_encoder/ (Model Garden); so does
    ours, through the config: the encoder is deeplab2's, the decoder and heads keep their initialisation."""
    prefix, expected = _prefix('swidernet_sac'), _outputs('swidernet_sac')
    assert deeplab2_checkpoint.is_deeplab2_checkpoint(prefix)
    assert deeplab2_checkpoint.find_encoder_scope(prefix) == 'backbone/_encoder'
    assert deeplab2_checkpoint.readable_items(prefix) == [common.CKPT_ENCODER]
    config = _fixture_config('axial_swidernet', prefix)
    backbone = config.model_options.backbone
    backbone.name, backbone.backbone_layer_multiplier = 'swidernet', 0.34
    backbone.use_squeeze_and_excite, backbone.use_sac_beyond_stride = True, 4
    model = builder.build_model(config, config_utils.validate(config)['train'])
    model.build((None,) + expected['pixels'].shape[1:])
    others = [v.numpy() for v in model.weights if not v.path.startswith(f'{model.name}/encoder/')]
    checkpoint_utils.make_init_fn(config.model_options, model.checkpoint_items)()
    assert max(_encoder_errors(model.encoder, expected).values()) < _TOLERANCE
    after = [v.numpy() for v in model.weights if not v.path.startswith(f'{model.name}/encoder/')]
    assert all(np.array_equal(a, b) for a, b in zip(others, after))


def test_deeplab2_key_names_of_the_family():
    suffix = '/.ATTRIBUTES/VARIABLE_VALUE'
    key = deeplab2_checkpoint.deeplab2_key
    assert key('res2_block1/conv2_bn/conv/switch/kernel', encoder_scope='backbone/_encoder') == \
        'backbone/_encoder/_stage2/_block1/_conv2_bn/_conv/_switch/kernel' + suffix
    assert key('res1_block3/conv1_bn_act/pre_global_context/convolution/bias') == \
        'encoder/_stage1/_block3/_conv1_bn_act/_pre_global_context/convolution/bias' + suffix
    assert key('res4_block2/squeeze_and_excite/se_conv/kernel') == \
        'encoder/_stage4/_block2/_squeeze_and_excite/_se_conv/kernel' + suffix
    assert key('stem/conv3_bn/batch_norm/moving_mean') == 'encoder/_stem/_conv3_bn/_batch_norm/moving_mean' + suffix
    assert key('decoder_stage4_block1/attention/height_axis/query_rpe') == \
        'encoder/_decoder_stage4/_block1/_attention/_height_axis/_query_rpe/embeddings' + suffix
    assert key('decoder_stage3_resized_fuse/strided_conv_bn1/conv/kernel') == \
        'encoder/_decoder_stage3_resized_fuse/_strided_conv_bn1/_conv/kernel' + suffix


def test_deeplab2_attention_is_global_up_to_its_query_shape():
    """At 1025x2049 and output stride 16 the maps are 65x129: deeplab2's query_shape 129 makes both axes global there.
    Its GeLU Axial-ResNet-50 on a 17 x 1537 image has a stride-16 axis of 97 (between 66 and 129): our deeplab2 layout
    (span 65, query_shape 129) reproduces it; span 65 alone (local windows, the paper's rule) does not."""
    expected = _outputs('axial_resnet50')
    assert expected['res4'].shape[2] == 97
    errors = {}
    for query_shape in (129, None):
        encoder = _encoder('axial_resnet50', query_shape=query_shape)
        deeplab2_checkpoint.load_deeplab2_checkpoint({common.CKPT_ENCODER: encoder}, _prefix('axial_resnet50'))
        errors[query_shape] = _encoder_errors(encoder, expected)
    assert max(errors[129].values()) < _TOLERANCE, errors[129]
    assert errors[None]['res4'] > 100 * _TOLERANCE, errors[None]


@pytest.mark.parametrize('length, global_', [(97, True), (129, True), (131, False)])
def test_query_shape_decides_global_or_local_by_axis_length(rng, length, global_):
    """query_shape 129, span 65: an axis up to 129 long equals global attention (same weights), a longer one the
    local span-65 layer without query_shape."""
    inputs = rng.normal(size=(2, length, 16)).astype(np.float32)
    layers = {name: AxialAttention(16, 32, num_heads=8, span=span, query_shape=query_shape)
              for name, span, query_shape in (('deeplab2', 65, 129), ('global', None, None), ('local', 65, None))}
    for layer in layers.values():
        layer.build(inputs.shape)
    for layer in ('global', 'local'):
        layers[layer].set_weights(layers['deeplab2'].get_weights())
    outputs = {name: layer(inputs, training=True).numpy() for name, layer in layers.items()}
    same, other = ('global', 'local') if global_ else ('local', 'global')
    np.testing.assert_allclose(outputs['deeplab2'], outputs[same], rtol=1e-5, atol=1e-5)
    assert np.abs(outputs['deeplab2'] - outputs[other]).max() > 1e-2
    assert AxialAttention.from_config(layers['deeplab2'].get_config()).query_shape == 129


def _synthetic_batch(size: int = 33, batch: int = 2) -> dict:
    """Images of the built-in synthetic dataset and their Panoptic-DeepLab targets."""
    descriptor = dataset.get('synthetic_panoptic')
    mapping = coco_id_mapping(dataset.SYNTHETIC_CATEGORIES)
    things = {c['id'] for c in dataset.SYNTHETIC_CATEGORIES if c['isthing']}
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(batch):
        image, ids, segments = synthetic.render_panoptic_example(rng, size, size)
        label = np.zeros(ids.shape, np.int32)  # void: class 0
        for instance, segment in enumerate(segments, start=1):
            thing = segment['category_id'] in things and not segment['iscrowd']
            label[ids == segment['id']] = mapping[segment['category_id']] * descriptor.panoptic_label_divisor + (
                instance if thing else 0)
        images.append(image)
        labels.append(label)
    batch_targets = targets.generate_panoptic_targets_batch(
        np.stack(labels), label_divisor=descriptor.panoptic_label_divisor, ignore_label=descriptor.ignore_label,
        thing_classes=descriptor.thing_classes)
    return dict(batch_targets, **{common.IMAGE: tf.constant(np.stack(images), tf.float32)})


# Every new encoder family at a width that trains in seconds: registry name and overrides (resnet50_beta differs
# from resnet50 by max_deeplab_s_backbone's stem only).
_FAMILIES = {
    'resnet50': dict(blocks_per_stage=[1, 1, 1, 1]),
    'swidernet_sac_se': dict(blocks_per_stage=[1, 1, 1, 1], use_squeeze_and_excite=True, use_sac_beyond_stride=4),
    'axial_swidernet': dict(blocks_per_stage=[1, 1, 2, 1]),
    'max_deeplab_s_backbone': dict(blocks_per_stage=[1, 1, 2, 1]),
    'max_deeplab_l_backbone': dict(blocks_per_stage=[1, 1, 2, 1]),
    'axial_resnet50': dict(blocks_per_stage=[1, 1, 2, 1]),
}


@pytest.mark.parametrize('family', sorted(_FAMILIES))
def test_a_few_training_steps_on_each_new_encoder(family):
    """Three steps of the trainer's train step (Adam, Panoptic-DeepLab loss, drop path on) on synthetic images: the
    loss is finite and falls, and every trainable variable moves except MaX-DeepLab-L's stacked decoder, which
    Panoptic-DeepLab does not read (as in deeplab2, it gets no gradient), and the attention logits' batch-norm shift,
    which cancels in the softmax (its exact gradient is zero; `AxialAttention`)."""
    name = 'swidernet' if family == 'swidernet_sac_se' else family
    # Seeded: which blocks drop path drops depends on the seed; unseeded, whatever ran before in the process chose,
    # and a block dropped in every step (as res4_block2 of max_deeplab_s_backbone once was) gets no gradient.
    keras.utils.set_random_seed(0)
    model = registry.build_model(name, num_classes=7, width_multiplier=0.0625, stem_width_multiplier=0.125,
                                 drop_path_keep_prob=0.8, **_FAMILIES[family])
    model.build((None, 33, 33, 3))
    loss = PanopticDeepLabLoss(ignore_label=0)
    step = train_step.make_train_step_fn(lambda inputs: loss(inputs, model(inputs[common.IMAGE], training=True)),
                                         model.trainable_variables, keras.optimizers.Adam(1e-3), global_batch_size=2)
    inputs = _synthetic_batch()
    before = {v.path: v.numpy() for v in model.trainable_variables}
    losses = [float(step(inputs)[common.TOTAL_LOSS]) for _ in range(3)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    checked = [v for v in model.trainable_variables if not v.path.endswith('batch_norm_similarity/beta')]
    unchanged = {v.path for v in checked if np.array_equal(before[v.path], v.numpy())}
    expected = {v.path for v in checked if '/encoder/decoder_stage' in v.path}
    assert unchanged == expected and (family == 'max_deeplab_l_backbone') == bool(expected), sorted(unchanged)[:5]


@pytest.mark.parametrize('name, output_stride', [('resnet50', 8), ('swidernet', 16), ('max_deeplab_l_backbone', 16),
                                                 ('axial_resnet50', 32)])
def test_encoder_endpoints_follow_feature_info(rng, name, output_stride):
    """The contract of `encoder.base`: res2..res5 (and backbone_output with a stacked decoder) at
    ceil(size / stride) with the channels of feature_info, res5 at the output stride."""
    encoder = registry.build_model(name, width_multiplier=0.0625, stem_width_multiplier=0.125,
                                   blocks_per_stage=[1, 1, 2, 1], output_stride=output_stride).encoder
    features = encoder(rng.normal(size=(1, 45, 67, 3)).astype(np.float32))
    assert list(features) == list(encoder.feature_info)
    assert list(encoder.feature_info)[:4] == [common.RES2, common.RES3, common.RES4, common.RES5]
    for key, shape in encoder.feature_shapes((1, 45, 67, 3)).items():
        assert features[key].shape == shape, key
    assert encoder.feature_info[common.RES5]['stride'] == output_stride
    assert (BACKBONE_OUTPUT in features) == (name == 'max_deeplab_l_backbone')


def test_models_take_an_encoder_layer_or_its_serialised_config(rng, tmp_path):
    """keras-hub style: the model takes the encoder itself; its config holds the encoder's serialised config and
    round-trips through JSON and a .keras file. A classifier pools the encoder's classification feature
    (MaX-DeepLab-L's stacked-decoder output)."""
    encoder = DeepLab2AxialResNet(backbone_type='wider_resnet', blocks_per_stage=[1, 1, 2, 1], width_multiplier=0.0625,
                                  stem_width_multiplier=0.125, attention_bottleneck_expansion=4, key_expansion=2,
                                  value_expansion=4, backbone_decoder_num_stacks=1, name='encoder')
    model = AxialDeepLab(5, encoder, decoder_config=dict(semantic_aspp_channels=16, semantic_decoder_channels=16),
                         name='injected')
    images = tf.constant(rng.uniform(0, 255, (1, 33, 33, 3)).astype(np.float32))
    expected = model(images)
    config = json.loads(json.dumps(model.get_config()))
    assert config['encoder']['class_name'] == 'DeepLab2AxialResNet'
    rebuilt = AxialDeepLab.from_config(config)
    rebuilt.build((None, 33, 33, 3))
    rebuilt.set_weights(model.get_weights())
    assert rebuilt.get_config() == model.get_config()
    for key, value in rebuilt(images).items():
        np.testing.assert_allclose(value.numpy(), expected[key].numpy(), rtol=1e-5, atol=1e-5)
    model.save(tmp_path / 'injected.keras')
    loaded = keras.saving.load_model(tmp_path / 'injected.keras')
    np.testing.assert_allclose(loaded(images)[common.PRED_SEMANTIC_LOGITS_KEY].numpy(),
                               expected[common.PRED_SEMANTIC_LOGITS_KEY].numpy(), rtol=1e-5, atol=1e-5)

    classifier = AxialResNetClassifier(7, keras.saving.serialize_keras_object(encoder))
    classifier.build((None, 33, 33, 3))
    assert classifier.encoder.classification_feature == BACKBONE_OUTPUT
    assert classifier.classification_head.kernel.shape == (encoder.feature_info[BACKBONE_OUTPUT]['channels'], 7)
    assert classifier(images)[common.PRED_LOGITS_KEY].shape == (1, 7)
    with pytest.raises(ValueError, match='`encoder` must be an Encoder layer'):
        AxialDeepLab(5, keras.layers.Dense(3))


def _tiny_config() -> config_pb2.ExperimentOptions:
    return config_utils.load_config(os.path.join(_REPO, 'configs', 'synthetic', 'axial_deeplab_tiny.textproto'),
                                    allow_unfilled=True)


def test_builder_sends_each_encoder_only_the_fields_it_has():
    """A convolutional encoder is sent no attention field, an Axial-ResNet no squeeze-and-excitation or switchable
    atrous convolution; deeplab2's family reads them as deeplab2's builder does (its proto defaults included)."""
    config = _tiny_config()
    descriptor = config_utils.validate(config)['train']
    config.model_options.backbone.name = 'resnet50'
    with pytest.raises(builder.ModelConfigError, match='backbone.axial_span: resnet50 is a convolutional encoder'):
        builder.build_model(config, descriptor)
    config.model_options.backbone.ClearField('axial_span')
    config.model_options.backbone.ClearField('num_heads')
    config.model_options.backbone.use_squeeze_and_excite = True
    config.model_options.backbone.use_sac_beyond_stride = 8
    encoder = builder.build_model(config, descriptor).encoder
    assert (encoder.use_squeeze_and_excite, encoder.use_sac_beyond_stride) == (True, 8)
    # Unset fields take deeplab2's proto defaults for its names (output stride 32, widths 1), not the registry's.
    assert (encoder.output_stride, encoder.width_multiplier, encoder.blocks_per_stage) == (16, 1.0, [3, 4, 6, 3])
    config.model_options.backbone.ClearField('output_stride')
    assert builder.build_model(config, descriptor).encoder.output_stride == 32
    config = _tiny_config()
    config.model_options.backbone.use_squeeze_and_excite = True
    with pytest.raises(builder.ModelConfigError, match='backbone.use_squeeze_and_excite: axial_deeplab_tiny '
                                                       r'\(AxialResNet\) has no squeeze-and-excitation'):
        builder.build_model(config, descriptor)
