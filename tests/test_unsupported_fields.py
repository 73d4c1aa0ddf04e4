"""deeplab2 fields that select something deeplab_axial does not build are rejected by name, not ignored."""

import glob
import os
import re

import pytest
from google.protobuf import descriptor_pool, text_format

from deeplab_axial import config_utils, unsupported_fields
from deeplab_axial.protos import config_pb2

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name='axial_deeplab_tiny', snippet=''):
    config = config_utils.load_config(os.path.join(_REPO, 'configs', 'synthetic', f'{name}.textproto'),
                                      params={'DATA_DIR': '/data'})
    text_format.Merge(snippet, config)
    return config


@pytest.mark.parametrize('snippet, field', [
    ('model_options { decoder { atrous_rates: 6 atrous_rates: 12 } }', 'model_options.decoder.atrous_rates'),
    ('model_options { decoder { feature_key: "res4" } }', 'model_options.decoder.feature_key'),
    ('model_options { panoptic_deeplab { instance { enable: false } } }',
     'model_options.panoptic_deeplab.instance.enable'),
    ('model_options { decoder { aspp_use_only_1x1_proj_conv: false } }',
     'model_options.decoder.aspp_use_only_1x1_proj_conv'),
    ('model_options { decoder { decoder_conv_type: "standard_conv" } }', 'model_options.decoder.decoder_conv_type'),
    ('model_options { panoptic_deeplab { instance { center_head { head_conv_type: "standard_conv" } } } }',
     'model_options.panoptic_deeplab.instance.center_head.head_conv_type'),
    ('model_options { panoptic_deeplab { semantic_head { max_value_after_activation: 6 } } }',
     'model_options.panoptic_deeplab.semantic_head.max_value_after_activation'),
    ('model_options { panoptic_deeplab { depth_head { output_channels: 1 } } }',
     'model_options.panoptic_deeplab.depth_head'),
    ('model_options { panoptic_deeplab { instance { next_regression_head { output_channels: 2 } } } }',
     'model_options.panoptic_deeplab.instance.next_regression_head'),
    ('model_options { backbone { pretrained_weights: "/w.h5" } }', 'model_options.backbone.pretrained_weights'),
    ('model_options { backbone { use_recompute_grad: true } }', 'model_options.backbone.use_recompute_grad'),
    ('trainer_options { loss_options { depth_loss { weight: 1 } } }', 'trainer_options.loss_options.depth_loss'),
    ('trainer_options { loss_options { pq_style_loss { weight: 1 } } }', 'trainer_options.loss_options.pq_style_loss'),
    ('train_dataset_options { augmentations { panoptic_copy_paste { panoptic_copy_paste_scale: 1 } } }',
     'train_dataset_options.augmentations.panoptic_copy_paste'),
    ('train_dataset_options { use_two_frames: true }', 'train_dataset_options.use_two_frames'),
    ('train_dataset_options { cameras_to_use: "front" }', 'train_dataset_options.cameras_to_use'),
    ('eval_dataset_options { decode_groundtruth_label: false }', 'eval_dataset_options.decode_groundtruth_label'),
    ('evaluator_options { use_tf_function: false }', 'evaluator_options.use_tf_function'),
    ('evaluator_options { thing_area_limit: 100 }', 'evaluator_options.thing_area_limit'),
    ('evaluator_options { save_raw_predictions: true }', 'evaluator_options.save_raw_predictions'),
    ('evaluator_options { override_save_dir: "/out" }', 'evaluator_options.override_save_dir'),
    ('evaluator_options { detailed_ap_metrics: true }', 'evaluator_options.detailed_ap_metrics'),
    # MaX-DeepLab-only fields are rejected even at deeplab2's default value: they configure nothing here.
    ('evaluator_options { pixel_confidence_threshold: 0.4 }', 'evaluator_options.pixel_confidence_threshold'),
])
def test_unbuilt_option_is_rejected_by_field_path(snippet, field):
    with pytest.raises(config_utils.ConfigError) as e:
        config_utils.validate(_config(snippet=snippet))
    assert f'- {field} must' in str(e.value)


def test_every_violation_is_reported_at_once_with_the_received_value():
    config = _config(snippet='model_options { decoder { atrous_rates: 6 atrous_rates: 12 } } '
                             'evaluator_options { save_raw_predictions: true }')
    errors = unsupported_fields.unsupported_fields(config)
    assert errors == [
        'model_options.decoder.atrous_rates must not be set (Axial-DeepLab has no ASPP: the decoder projects its '
        'input feature with one 1x1 convolution). Received: [6, 12]',
        "evaluator_options.save_raw_predictions must be False if set (predictions are saved in COCO panoptic format "
        "with save_predictions). Received: True"]


def test_accepted_values_spelled_out_pass():
    config = _config(snippet='''
        model_options { decoder { decoder_conv_type: "depthwise_separable_conv" aspp_use_only_1x1_proj_conv: true }
                        backbone { use_squeeze_and_excite: false use_sac_beyond_stride: -1 } }
        train_dataset_options { use_two_frames: false decode_groundtruth_label: true }
        evaluator_options { use_tf_function: true save_raw_predictions: false thing_area_limit: 0
                            merge_semantic_and_instance_with_tf_op: false }''')
    assert unsupported_fields.unsupported_fields(config) == []
    config_utils.validate(config)


def test_shipped_configs_use_no_unbuilt_option():
    for folder, _, files in os.walk(os.path.join(_REPO, 'configs')):
        for name in files:
            config = config_utils.load_config(os.path.join(folder, name), allow_unfilled=True)
            assert unsupported_fields.unsupported_fields(config) == [], name


def test_rules_name_real_proto_fields_with_accepted_values_of_their_type():
    pool = descriptor_pool.Default()
    for (message, field), (accepted, reason) in unsupported_fields._RULES.items():
        descriptor = pool.FindMessageTypeByName(message).fields_by_name[field]
        assert reason
        for value in accepted:
            assert not descriptor.is_repeated and descriptor.message_type is None, (message, field)
            assert type(value) is type(descriptor.default_value), (message, field, value)


# Fields parsed for deeplab2 compatibility that change nothing here, and why; every other field must be read by the
# code or be covered by a rule.
_NO_EFFECT = {
    'max_thing_id': 'only read with thing_id_mask_annotations, which is rejected',
    'raw_panoptic_format': 'only read with save_raw_predictions, which is rejected',
    'convert_raw_to_eval_ids': 'only read with save_raw_predictions, which is rejected',
    'merge_semantic_and_instance_with_tf_op': 'the merge is always TensorFlow ops (documented in the proto)',
}


def test_every_config_field_is_read_rejected_or_documented_as_no_effect():
    sources = [p for p in glob.glob(os.path.join(_REPO, '**', '*.py'), recursive=True)
               if os.sep + 'protos' + os.sep not in p and os.sep + 'tests' + os.sep not in p]
    code = '\n'.join(open(p).read() for p in sources)
    rejected = set(unsupported_fields._RULES)
    unsupported_meta = {'deeplab_v3', 'deeplab_v3_plus', 'motion_deeplab', 'max_deeplab', 'vip_deeplab'}
    assert unsupported_meta.isdisjoint(config_utils.SUPPORTED_META_ARCHITECTURES)
    missing, seen = [], set()

    def walk(message):
        if message.full_name in seen:
            return
        seen.add(message.full_name)
        for field in message.fields:
            if (message.full_name, field.name) in rejected:
                continue  # Rejected, with everything inside it.
            if message.full_name == 'deeplab_axial.ModelOptions' and field.name in unsupported_meta:
                continue  # A meta-architecture validation refuses.
            if not re.search(r'\b' + field.name + r'\b', code) and field.name not in _NO_EFFECT:
                missing.append(f'{message.full_name}.{field.name}')
            if field.message_type is not None and not field.message_type.GetOptions().map_entry:
                walk(field.message_type)

    walk(config_pb2.ExperimentOptions.DESCRIPTOR)
    assert missing == []
