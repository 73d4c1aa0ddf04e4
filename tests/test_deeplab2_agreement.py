"""Agreement with deeplab2 itself: its checkpoints in our models, its outputs, post-processing and losses.

The files under tests/data/deeplab2 were written by deeplab2 (tf-keras, commit 64bc1c1; see make_fixtures.py
there): random weights, two 33x49 images. axial_deeplab_s holds a whole Panoptic-DeepLab (every checkpoint item) with
its raw outputs in inference and training mode and deeplab2's pure-TF post-processing; axial_resnet_s an
ImageNet-style encoder; panoptic_deeplab_losses.npz deeplab2's losses on random targets and predictions;
panoptic_deeplab_targets.npz deeplab2's training targets for a small panoptic label; resize.npz its data resizing.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format

from deeplab2_fingerprints import fingerprint_errors
from deeplab_axial import common, config_utils
from deeplab_axial.data import dataset, preprocessing, targets
from deeplab_axial.inference import inference_path, model_loader
from deeplab_axial.model import builder, registry
from deeplab_axial.model.deeplab2_checkpoint import (DEEPLAB2_LAYOUT, deeplab2_key, load_deeplab2_checkpoint,
                                                    readable_items)
from deeplab_axial.model.loss.panoptic_deeplab_loss import PanopticDeepLabLoss
from deeplab_axial.model.post_processor.panoptic_deeplab import PostProcessor
from trainer import checkpoint_utils

_DATA = os.path.join(os.path.dirname(__file__), 'data', 'deeplab2')
# The fixtures' encoder widths and depth (deeplab2's width 0.125, stem width 0.25, layer multiplier 0.34).
_SMALL = dict(width_multiplier=0.125, blocks_per_stage=[1, 1, 2, 1])
_LAYOUT = dict(DEEPLAB2_LAYOUT, stem_width_multiplier=0.25)
# Largest |ours - deeplab2| over the largest |deeplab2|. Float32 rounding grows about tenfold per stage through
# random-weight attention (deeplab2 itself moves by 4e-4 at res5 when its input moves by 1e-6); a wrong table
# orientation, head order or q/k order already gives 0.4 or more at res2.
_TOLERANCE = {'res2': 1e-5, 'res3': 1e-4, 'res4': 1e-3, 'res5': 5e-3}
_OUTPUT_TOLERANCE = 1e-3


def _fixture(name):
    return os.path.join(_DATA, name, 'ckpt-1'), np.load(os.path.join(_DATA, name, 'outputs.npz'))


def _encoder(name, **overrides):
    model = registry.build_model(name, span=None, **dict(_SMALL, **_LAYOUT, **overrides))
    model.build((None, 33, 49, 3))
    return model.encoder


def _relative_error(got, expected):
    return float(np.abs(np.asarray(got) - expected).max() / np.abs(expected).max())


def _encoder_errors(encoder, expected, images):
    features = encoder(tf.constant(images), training=False)
    return {key: _relative_error(features[key], expected[key]) for key in _TOLERANCE}


def _panoptic_config(prefix):
    config = config_utils.load_config('configs/cityscapes/axial_deeplab/axial_deeplab_s_os16.textproto',
                                      allow_unfilled=True)
    options = config.model_options
    for field in ('backbone', 'decoder', 'panoptic_deeplab'):
        options.ClearField(field)
    with open(os.path.join(_DATA, 'axial_deeplab_s', 'model_options.textproto')) as f:
        text_format.Parse(f.read(), options)  # what deeplab2 built the fixture from
    options.backbone.deeplab2_layout = True
    options.backbone.axial_span = 0  # global attention, as deeplab2
    options.initial_checkpoint = prefix
    options.restore_semantic_last_layer_from_initial_checkpoint = True
    options.restore_instance_last_layer_from_initial_checkpoint = True
    return config


@pytest.mark.parametrize('name', ['axial_deeplab_s', 'axial_resnet_s'])
def test_encoder_reproduces_deeplab2_endpoints(name):
    prefix, expected = _fixture(name)
    encoder = _encoder(name)
    assigned = load_deeplab2_checkpoint({common.CKPT_ENCODER: encoder}, prefix)
    assert len(assigned) == len(encoder.weights)
    images = expected['images'] / 127.5 - 1.0 if name == 'axial_deeplab_s' else expected['images']
    errors = _encoder_errors(encoder, expected, images)
    assert all(errors[key] < _TOLERANCE[key] for key in _TOLERANCE), errors
    # The attention batch norms keep deeplab2's broadcast shapes in the file and ours in the model.
    similarity = encoder.res2_block1.attention.height_axis.batch_norm_similarity.gamma
    stored = tf.train.load_checkpoint(prefix).get_tensor(assigned[similarity.path])
    assert stored.shape == (3, 1, 8, 1, 1) and similarity.shape == (3, 8)
    np.testing.assert_array_equal(similarity.numpy(), stored[:, 0, :, 0, 0])


def test_whole_panoptic_model_from_a_deeplab2_checkpoint_through_the_config():
    """backbone.deeplab2_layout builds the layout; the trainer's init_fn reads all four items; the raw outputs
    match deeplab2's in inference and in training mode."""
    prefix, expected = _fixture('axial_deeplab_s')
    assert readable_items(prefix) == [common.CKPT_ENCODER, common.CKPT_DECODER, common.CKPT_SEMANTIC_LAST_LAYER,
                                      common.CKPT_INSTANCE_LAST_LAYER]
    config = _panoptic_config(prefix)
    model = builder.build_model(config, config_utils.validate(config)['train'])
    model.build((None, 33, 49, 3))
    assert (model.encoder.stem_pool, model.encoder.project_strided_shortcut) == (False, False)
    checkpoint_utils.make_init_fn(config.model_options, model.checkpoint_items)()
    inference = model(tf.constant(expected['images']), training=False)
    # Training mode: batch statistics everywhere, including the attention's similarity and output batch norms, whose
    # moments we compute from small Gram matrices rather than from the logits as deeplab2 does.
    training = model(tf.constant(expected['images']), training=True)
    for ours, theirs in ((common.PRED_SEMANTIC_LOGITS_KEY, 'semantic_logits'),
                         (common.PRED_CENTER_HEATMAP_KEY, 'center_heatmap'),
                         (common.PRED_OFFSET_MAP_KEY, 'offset_map')):
        assert _relative_error(inference[ours], expected[theirs]) < _OUTPUT_TOLERANCE, ours
        assert _relative_error(training[ours], expected[f'train_{theirs}']) < _OUTPUT_TOLERANCE, ours

    config.model_options.backbone.deeplab2_layout = False
    with pytest.raises(ValueError, match='set model_options.backbone.deeplab2_layout: true'):
        checkpoint_utils.make_init_fn(config.model_options, model.checkpoint_items)()


def test_training_gradients_match_deeplab2():
    """Training-mode gradients of sum(output * fixed weight) for every trainable variable against deeplab2's
    (`deeplab2_fingerprints`: norm and an order-sensitive projection). Float32 rounding through the random network
    moves them by up to about 4% of a variable's gradient norm; a missing or wrong gradient path moves them by 100%.
    Gradients that are zero in exact arithmetic (the logits' batch-norm shift cancels in the softmax; a shift before
    a training-mode batch norm cancels) are float noise in deeplab2 and exactly zero or noise here: the 1e-6 of the
    largest norm in the denominator covers them."""
    prefix, expected = _fixture('axial_deeplab_s')
    config = _panoptic_config(prefix)
    model = builder.build_model(config, config_utils.validate(config)['train'])
    model.build((None, 33, 49, 3))
    keys = load_deeplab2_checkpoint(model.checkpoint_items, prefix)
    outputs = {'semantic_logits': common.PRED_SEMANTIC_LOGITS_KEY, 'center_heatmap': common.PRED_CENTER_HEATMAP_KEY,
               'offset_map': common.PRED_OFFSET_MAP_KEY}
    errors = fingerprint_errors(model, keys, expected, outputs)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 0.15, (worst, errors[worst])


def test_inference_loads_a_deeplab2_checkpoint_of_the_whole_model():
    """Export, evaluation and prediction restore through model_loader: a deeplab2 file of the whole model loads; an
    encoder-only one cannot serve a model with heads."""
    prefix, expected = _fixture('axial_deeplab_s')
    config = _panoptic_config('')
    config.eval_dataset_options.ClearField('crop_size')
    config.eval_dataset_options.crop_size.extend([33, 49])
    loaded = model_loader.load_model(config, prefix)
    outputs = loaded.model(tf.constant(expected['images']), training=False)
    assert _relative_error(outputs[common.PRED_SEMANTIC_LOGITS_KEY], expected['semantic_logits']) < _OUTPUT_TOLERANCE

    encoder_only, _ = _fixture('axial_resnet_s')
    with pytest.raises(model_loader.CheckpointError, match=r"deeplab2 checkpoint without \['decoder', "
                                                           r"'instance_last_layer', 'semantic_last_layer'\]"):
        model_loader.load_model(config, encoder_only)


def test_post_processing_of_deeplab2_outputs_matches_deeplab2():
    """Our post-processor on deeplab2's raw outputs gives deeplab2's semantic prediction and the same panoptic
    segments (instance ids aside: ours number centers by score, deeplab2 otherwise; PQ and AP ignore ids)."""
    _, expected = _fixture('axial_deeplab_s')
    post = PostProcessor.from_dataset(dataset.get('cityscapes_panoptic'), center_threshold=0.1, nms_kernel=3,
                                      keep_k_centers=400, stuff_area_limit=0)  # deeplab2's evaluator defaults
    result = post({common.PRED_SEMANTIC_LOGITS_KEY: tf.constant(expected['semantic_logits']),
                   common.PRED_CENTER_HEATMAP_KEY: tf.constant(expected['center_heatmap']),
                   common.PRED_OFFSET_MAP_KEY: tf.constant(expected['offset_map'])})
    np.testing.assert_array_equal(result[common.PRED_SEMANTIC_KEY].numpy(), expected['semantic_pred'])
    divisor = dataset.get('cityscapes_panoptic').panoptic_label_divisor
    ours, theirs = result[common.PRED_PANOPTIC_KEY].numpy(), expected['panoptic_pred']
    np.testing.assert_array_equal(ours // divisor, theirs // divisor)
    for i in range(len(ours)):
        pairs = set(zip(ours[i].ravel().tolist(), theirs[i].ravel().tolist()))
        assert len(pairs) == len(np.unique(ours[i])) == len(np.unique(theirs[i]))  # one-to-one segments
        assert len({t for t in np.unique(theirs[i]) if t % divisor}) >= 4  # the fixture has instances to match
        instance_pairs = set(zip(result[common.PRED_INSTANCE_KEY].numpy()[i].ravel().tolist(),
                                 expected['instance_pred'][i].ravel().tolist()))
        assert (0, 0) in instance_pairs and len(instance_pairs) == len({p[0] for p in instance_pairs})


def test_deeplab2_key_names():
    suffix = '/.ATTRIBUTES/VARIABLE_VALUE'
    assert deeplab2_key('stem_conv1/conv/kernel') == 'encoder/_stem/_conv1_bn_act/_conv/kernel' + suffix
    assert deeplab2_key('stem_conv/batch_norm/gamma') == 'encoder/_stem/_batch_norm/gamma' + suffix
    assert deeplab2_key('res4_block2/attention/width_axis/value_rpe') == \
        'encoder/_stage4/_block2/_attention/_width_axis/_value_rpe/embeddings' + suffix
    assert deeplab2_key('semantic_decoder/fusion1/depthwise/depthwise_conv/kernel', common.CKPT_DECODER) == \
        'semantic_decoder/_fusion_conv1/_conv1_bn_act/_depthwise/_depthwise_conv/depthwise_kernel' + suffix
    assert deeplab2_key('offset_head/pointwise/batch_norm/beta', common.CKPT_DECODER) == \
        'instance_regression_head_without_last_layer/_conv1_bn_act/_pointwise/_batch_norm/beta' + suffix
    assert deeplab2_key('center_last_layer/bias', common.CKPT_INSTANCE_LAST_LAYER) == \
        'instance_center_head_last_layer/bias' + suffix
    assert deeplab2_key('kernel', common.CKPT_SEMANTIC_LAST_LAYER) == 'semantic_last_layer/kernel' + suffix
    with pytest.raises(ValueError, match="'stem_block1' has no deeplab2 counterpart"):
        deeplab2_key('stem_block1/conv1/conv/kernel')
    with pytest.raises(ValueError, match="no deeplab2 name for 'offset'"):
        deeplab2_key('res2_block1/conv1/conv/offset')


def test_our_default_layout_and_the_classification_head_are_refused():
    """Same variables, different network (max-pool, unstrided res2): loading must not pass silently."""
    prefix, _ = _fixture('axial_resnet_s')
    model = registry.build_model('axial_resnet_s', span=None, stem_width_multiplier=0.25, **_SMALL)
    model.build((None, 33, 49, 3))
    with pytest.raises(ValueError, match='DEEPLAB2_LAYOUT'):
        load_deeplab2_checkpoint({common.CKPT_ENCODER: model.encoder}, prefix)
    with pytest.raises(ValueError, match="'classification_head' has no deeplab2 counterpart"):
        load_deeplab2_checkpoint(model.checkpoint_items, prefix)
    assert readable_items(prefix) == [common.CKPT_ENCODER]


@pytest.mark.parametrize('overrides, message', [
    (dict(width_multiplier=0.25), r"'encoder/_stage2/_block1/_conv1_bn_act/_conv/kernel/.ATTRIBUTES/VARIABLE_VALUE' "
                                  r"has shape \[1, 1, 32, 16\], our encoder 'res2_block1/conv1/conv/kernel' expects "
                                  r"\[1, 1, 32, 32\]"),
    (dict(blocks_per_stage=[1, 1, 1, 1]), r'42 variables have no counterpart in our encoder .*_stage4/_block2/'),
    (dict(blocks_per_stage=[1, 1, 3, 1]), r"no 'encoder/_stage4/_block3/"),
])
def test_mismatch_names_the_variable_and_assigns_nothing(overrides, message):
    prefix, _ = _fixture('axial_deeplab_s')
    encoder = _encoder('axial_deeplab_s', **overrides)
    before = [v.numpy() for v in encoder.weights]
    with pytest.raises(ValueError, match=message):
        load_deeplab2_checkpoint({common.CKPT_ENCODER: encoder}, prefix)
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, encoder.weights))


def test_deeplab2_layout_survives_keras_save_and_load(tmp_path):
    prefix, expected = _fixture('axial_resnet_s')
    model = registry.build_model('axial_resnet_s', span=None, **dict(_SMALL, **_LAYOUT))
    model.build((None, 33, 49, 3))
    load_deeplab2_checkpoint({common.CKPT_ENCODER: model.encoder}, prefix)
    model.save(tmp_path / 'model.keras')
    loaded = keras.saving.load_model(tmp_path / 'model.keras')
    # The layout flags survive the round trip; the outputs check the rest.
    assert loaded.encoder.project_strided_shortcut is False and loaded.encoder.stem_pool is False
    errors = _encoder_errors(loaded.encoder, expected, expected['images'])
    assert all(errors[key] < _TOLERANCE[key] for key in _TOLERANCE), errors


def test_panoptic_deeplab_losses_match_deeplab2():
    """deeplab2's DeepLabFamilyLoss (Cityscapes Axial-DeepLab options) on random targets and predictions: the same
    per-example center and offset losses; the same semantic loss when every pixel is valid. With void pixels deeplab2
    takes its top 20% of all pixels and we of the valid ones (base_loss docstring), so ours averages fewer, harder
    pixels and comes out higher."""
    data = np.load(os.path.join(_DATA, 'panoptic_deeplab_losses.npz'))
    tensors = {key: tf.constant(value) for key, value in data.items() if not key.startswith('expected')}
    loss = PanopticDeepLabLoss(ignore_label=255, semantic_loss_weight=1.0, center_loss_weight=200.0,
                               regression_loss_weight=0.01, top_k_percent=0.2)
    ours = loss(tensors, tensors)
    for key in (common.CENTER_LOSS, common.REGRESSION_LOSS):
        np.testing.assert_allclose(ours[key], data[f'expected_{key}'], rtol=1e-6)
    all_valid = loss(dict(tensors, **{common.GT_SEMANTIC_KEY: tensors['semantic_gt_all_valid']}), tensors)
    np.testing.assert_allclose(all_valid[common.SEMANTIC_LOSS], data['expected_all_valid_semantic_loss'], rtol=1e-6)
    assert np.all(ours[common.SEMANTIC_LOSS].numpy() > data[f'expected_{common.SEMANTIC_LOSS}'])


def test_panoptic_deeplab_targets_match_deeplab2():
    """deeplab2's sample generator (eval mode at the label's own size, sigma 8, instances under 100 pixels weighted
    3) on a label with stuff, void, a crowd region and instances of 1 to 400 pixels, two at the border."""
    data = np.load(os.path.join(_DATA, 'panoptic_deeplab_targets.npz'))
    descriptor = dataset.get('cityscapes_panoptic')
    ours = targets.generate_panoptic_targets(
        data['panoptic'], label_divisor=descriptor.panoptic_label_divisor, ignore_label=descriptor.ignore_label,
        thing_classes=descriptor.thing_classes, sigma=8.0, small_instance_threshold=100, small_instance_weight=3.0)
    for key in (common.GT_SEMANTIC_KEY, common.SEMANTIC_LOSS_WEIGHT_KEY, common.CENTER_LOSS_WEIGHT_KEY,
                common.REGRESSION_LOSS_WEIGHT_KEY, common.GT_INSTANCE_REGRESSION_KEY):
        np.testing.assert_array_equal(ours[key], data[f'expected_{key}'], err_msg=key)
    np.testing.assert_allclose(ours[common.GT_INSTANCE_CENTER_KEY], data['expected_instance_center_gt'], atol=1e-7)
    assert data['expected_semantic_loss_weight'].max() == 3.0  # the fixture has small instances


def test_resizing_matches_deeplab2():
    """deeplab2's resize_to_range (two floored steps: up to the minimum side, then down to fit the maximum), its
    random scaling (floored size) and its undo_preprocessing, all resizing with align_corners: the same sizes and the
    same pixels."""
    data = np.load(os.path.join(_DATA, 'resize.npz'))
    for (height, width, low, high, factor), expected in zip(data['cases'], data['sizes']):
        got = preprocessing.resize_to_range_size(tf.constant(height), tf.constant(width), int(low), int(high),
                                                 int(factor))
        np.testing.assert_array_equal(got, expected, err_msg=str((height, width, low, high, factor)))
    image, label = tf.constant(data['image']), tf.constant(data['label'])
    ranged = preprocessing.resize_to_range(image, label, 61, 81, 0)
    np.testing.assert_allclose(ranged[0], data['range_image'], atol=1e-3)
    np.testing.assert_array_equal(ranged[1], data['range_label'])
    for name, scale in (('small', 0.6), ('large', 1.35)):
        scaled = preprocessing.scale_image_and_label(image, label, tf.constant(scale))
        np.testing.assert_allclose(scaled[0], data[f'{name}_image'], atol=1e-3)
        np.testing.assert_array_equal(scaled[1], data[f'{name}_label'])
    # Back to the image size after evaluation (deeplab2's undo_preprocessing): crop the valid region, align corners.
    restored = inference_path.restore_to_image_size(
        {common.PRED_PANOPTIC_KEY: tf.constant(data['undo_panoptic_pred']),
         common.PRED_SEMANTIC_PROBS_KEY: tf.constant(data['undo_semantic_probs'])}, [9, 13], [25, 37])
    np.testing.assert_array_equal(restored[common.PRED_PANOPTIC_KEY], data['undone_panoptic_pred'])
    np.testing.assert_allclose(restored[common.PRED_SEMANTIC_PROBS_KEY], data['undone_semantic_probs'], atol=1e-6)
