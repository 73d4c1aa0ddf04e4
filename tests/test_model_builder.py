"""Models and post-processors built from configs: every shipped config builds, fields reach the layers."""

import glob
import os

import pytest

from deeplab_axial import config_utils
from deeplab_axial.model import builder

_CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), '..', 'configs', '**', '*.textproto'),
                            recursive=True))


def _load(path):
    config = config_utils.load_config(path, allow_unfilled=True)
    return config, config_utils.validate(config)['train']


@pytest.mark.parametrize('path', _CONFIGS, ids=[os.path.relpath(p, 'configs') for p in _CONFIGS])
def test_every_shipped_config_builds_its_model_and_post_processor(path):
    config, descriptor = _load(path)
    model = builder.build_model(config, descriptor)
    assert model.name == config.model_options.backbone.name
    assert model.num_classes == descriptor.num_classes
    if descriptor.is_panoptic:
        post = builder.build_post_processor(config, descriptor)
        assert post.nms_kernel == config.evaluator_options.nms_kernel
        assert post.stuff_area_limit == config.evaluator_options.stuff_area_limit


def test_decoder_and_backbone_fields_reach_the_layers():
    config, descriptor = _load('configs/synthetic/axial_deeplab_tiny.textproto')
    config.model_options.decoder.decoder_channels = 24
    config.model_options.panoptic_deeplab.instance.center_head.head_channels = 6
    config.model_options.backbone.backbone_width_multiplier = 0.25
    model = builder.build_model(config, descriptor)
    model.build((1, 33, 33, 3))
    assert model.decoder.semantic_decoder.fusion_channels == 24
    assert model.instance_last_layer.center.kernel.shape == (1, 1, 6, 1)
    assert model.encoder.width_multiplier == 0.25
    assert model.encoder.span == config.model_options.backbone.axial_span


def test_classification_dropout_rate_reaches_the_model_and_is_range_checked():
    config, descriptor = _load('configs/synthetic/axial_resnet_tiny.textproto')
    config.model_options.classification.dropout_rate = 0.2
    model = builder.build_model(config, descriptor)
    assert model.dropout_rate == pytest.approx(0.2) and model.get_config()['dropout_rate'] == pytest.approx(0.2)
    config.model_options.classification.dropout_rate = 1.0
    with pytest.raises(config_utils.ConfigError, match=r'classification.dropout_rate must be in \[0, 1\)'):
        config_utils.validate(config)


def test_unset_width_keeps_the_variant_width():
    """deeplab2's builder always passed width 1.0 (its S became L); ours only overrides a field that is set."""
    config, descriptor = _load('configs/cityscapes/axial_deeplab/axial_deeplab_s_os16.textproto')
    config.model_options.backbone.ClearField('backbone_width_multiplier')
    assert builder.build_model(config, descriptor).encoder.width_multiplier == 0.5


def test_errors_name_the_field():
    config, descriptor = _load('configs/synthetic/axial_deeplab_tiny.textproto')
    config.model_options.panoptic_deeplab.semantic_head.output_channels = 5
    with pytest.raises(builder.ModelConfigError, match='semantic_head.output_channels is 5'):
        builder.build_model(config, descriptor)
    config, descriptor = _load('configs/synthetic/axial_deeplab_tiny.textproto')
    config.model_options.backbone.name = 'resnet101'
    with pytest.raises(builder.ModelConfigError, match='backbone.name.*axial_deeplab_s'):
        builder.build_model(config, descriptor)
    config, descriptor = _load('configs/synthetic/axial_deeplab_tiny.textproto')
    config.model_options.panoptic_deeplab.low_level[0].feature_key = 'res4'
    with pytest.raises(builder.ModelConfigError, match='feature_key'):
        builder.build_model(config, descriptor)


@pytest.mark.parametrize('field, value, message', [
    ('output_stride', 8, r'^model_options.backbone.output_stride: AxialResNet: `output_stride` must be one of'),
    # Passes validation; the attention layer rejects it (8 key channels per block in 3 heads).
    ('num_heads', 3, r'^model_options.backbone.num_heads: AxialAttention: `num_heads` must divide'),
])
def test_layer_errors_name_the_config_field(field, value, message):
    config, descriptor = _load('configs/synthetic/axial_deeplab_tiny.textproto')
    setattr(config.model_options.backbone, field, value)
    with pytest.raises(builder.ModelConfigError, match=message):
        builder.build_model(config, descriptor)


def test_layer_multiplier_truncates_block_counts_as_deeplab2():
    """deeplab2's utils.scale_int_list: int(count * multiplier); a stage left without blocks is an error."""
    config, descriptor = _load('configs/cityscapes/axial_deeplab/axial_deeplab_s_os16.textproto')
    config.model_options.backbone.backbone_layer_multiplier = 0.5
    assert builder.build_model(config, descriptor).encoder.blocks_per_stage == [1, 2, 3, 1]
    config.model_options.backbone.backbone_layer_multiplier = 0.3
    with pytest.raises(builder.ModelConfigError,
                       match=r'backbone_layer_multiplier: 0.3 leaves a stage .* without blocks: \[0, 1, 1, 0\]'):
        builder.build_model(config, descriptor)
