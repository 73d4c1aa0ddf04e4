"""deeplab2 config fields that deeplab_axial parses but does not build, and the values it accepts for them.

The protos keep deeplab2's field names and numbers, so a deeplab2 config loads unchanged. Some of those fields
select things this project does not implement (ASPP branches, standard-conv heads, video and depth heads, MaX-DeepLab
losses, copy-paste, raw-prediction saving, ...). A config that sets one of them to anything but the value that
matches what deeplab_axial builds is rejected by `config_utils.validate`, naming the field, instead of being trained
as something else. Setting such a field to its accepted value (deeplab2 configs often spell out defaults) is fine.
"""

from typing import Dict, List, Tuple

from google.protobuf import message as message_lib

# Per proto message (full name) and field: the accepted values, or () for "must not be set at all", and why.
_RULES: Dict[Tuple[str, str], Tuple[tuple, str]] = {
    ('deeplab_axial.DecoderOptions', 'atrous_rates'): (
        (), 'Axial-DeepLab has no ASPP: the decoder projects its input feature with one 1x1 convolution'),
    ('deeplab_axial.DecoderOptions', 'aspp_use_only_1x1_proj_conv'): (
        (True,), 'the decoder always uses the 1x1 projection only (Axial-DeepLab has no ASPP)'),
    ('deeplab_axial.DecoderOptions', 'decoder_conv_type'): (
        ('depthwise_separable_conv',), 'the decoder fuses with 5x5 depthwise-separable convolutions only'),
    ('deeplab_axial.HeadOptions', 'head_conv_type'): (
        ('depthwise_separable_conv',), 'the heads use 5x5 depthwise-separable convolutions only'),
    ('deeplab_axial.HeadOptions', 'max_value_after_activation'): ((0.0,), 'output clipping is not implemented'),
    ('deeplab_axial.HeadOptions', 'min_value_after_activation'): ((0.0,), 'output clipping is not implemented'),
    ('deeplab_axial.InstanceOptions', 'enable'): (
        (True,), 'a semantic-only Panoptic-DeepLab (no instance branch) is not built'),
    ('deeplab_axial.DecoderOptions', 'feature_key'): (('res5',), 'the decoder reads the encoder\'s res5 endpoint'),
    ('deeplab_axial.InstanceOptions', 'next_regression_head'): (
        (), 'video (Motion/ViP-DeepLab) heads are not built'),
    ('deeplab_axial.ModelOptions.PanopticDeeplabOptions', 'depth_head'): (
        (), 'the depth (ViP-DeepLab) head is not built'),
    ('deeplab_axial.ModelOptions.BackboneOptions', 'pretrained_weights'): (
        (), 'use model_options.initial_checkpoint to initialise the backbone'),
    ('deeplab_axial.ModelOptions.BackboneOptions', 'use_recompute_grad'): (
        (False,), 'recomputing the axial blocks in the backward pass is not implemented'),
    ('deeplab_axial.LossOptions', 'motion_loss'): ((), 'only the Panoptic-DeepLab and classification losses exist'),
    ('deeplab_axial.LossOptions', 'next_regression_loss'): (
        (), 'only the Panoptic-DeepLab and classification losses exist'),
    ('deeplab_axial.LossOptions', 'pq_style_loss'): ((), 'MaX-DeepLab losses are not implemented'),
    ('deeplab_axial.LossOptions', 'mask_id_cross_entropy_loss'): ((), 'MaX-DeepLab losses are not implemented'),
    ('deeplab_axial.LossOptions', 'instance_discrimination_loss'): ((), 'MaX-DeepLab losses are not implemented'),
    ('deeplab_axial.LossOptions', 'depth_loss'): ((), 'the depth (ViP-DeepLab) head is not built'),
    ('deeplab_axial.DatasetOptions.AugmentationOptions', 'panoptic_copy_paste'): (
        (), 'panoptic copy-paste augmentation is not implemented'),
    ('deeplab_axial.DatasetOptions', 'use_two_frames'): ((False,), 'video (two-frame) inputs are not implemented'),
    ('deeplab_axial.DatasetOptions', 'use_next_frame'): ((False,), 'video (two-frame) inputs are not implemented'),
    ('deeplab_axial.DatasetOptions', 'thing_id_mask_annotations'): (
        (False,), 'thing-id mask annotations (MaX-DeepLab) are not read'),
    ('deeplab_axial.DatasetOptions', 'cameras_to_use'): ((), 'multi-camera (Waymo) inputs are not implemented'),
    ('deeplab_axial.DatasetOptions', 'decode_groundtruth_label'): (
        (True,), 'the input pipeline always decodes labels; predict on unlabeled images with deeplab_axial.predict'),
    ('deeplab_axial.EvaluatorOptions', 'use_tf_function'): (
        (True,), 'evaluation always runs inside tf.function'),
    ('deeplab_axial.EvaluatorOptions', 'thing_area_limit'): (
        (0,), 'Panoptic-DeepLab post-processing keeps every thing segment (stuff_area_limit applies to stuff)'),
    ('deeplab_axial.EvaluatorOptions', 'save_raw_predictions'): (
        (False,), 'predictions are saved in COCO panoptic format with save_predictions'),
    ('deeplab_axial.EvaluatorOptions', 'override_save_dir'): (
        (), 'predictions go to <experiment dir>/predictions'),
    ('deeplab_axial.EvaluatorOptions', 'detailed_ap_metrics'): (
        (False,), 'AP is reported as AP, AP50 and AP75 (COCO mask AP)'),
    ('deeplab_axial.EvaluatorOptions', 'transformer_class_confidence_threshold'): (
        (), 'MaX-DeepLab post-processing is not implemented'),
    ('deeplab_axial.EvaluatorOptions', 'pixel_confidence_threshold'): (
        (), 'MaX-DeepLab post-processing is not implemented'),
    ('deeplab_axial.EvaluatorOptions', 'transformer_post_processing'): (
        (), 'MaX-DeepLab post-processing is not implemented'),
    ('deeplab_axial.EvaluatorOptions', 'maskwise_postprocessing'): (
        (), 'MaX-DeepLab post-processing is not implemented'),
}


def unsupported_fields(config: message_lib.Message, path: str = '') -> List[str]:
    """One message per field of `config` (recursively) that selects something deeplab_axial does not build."""
    errors = []
    for field, value in config.ListFields():
        name = f'{path}.{field.name}' if path else field.name
        rule = _RULES.get((config.DESCRIPTOR.full_name, field.name))
        if rule is not None:
            accepted, reason = rule
            if value not in accepted:
                expected = 'must not be set' if not accepted else f'must be {accepted[0]!r} if set'
                errors.append(f'{name} {expected} ({reason}). Received: {_shown(value)}')
            continue
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = [(f'{name}[{key!r}]', item) for key, item in value.items()]
        elif field.is_repeated:
            items = [(f'{name}[{i}]', item) for i, item in enumerate(value)]
        else:
            items = [(name, value)]
        for item_name, item in items:
            if isinstance(item, message_lib.Message):
                errors += unsupported_fields(item, item_name)
    return errors


def _shown(value) -> str:
    if isinstance(value, message_lib.Message):
        return '{' + str(value).strip().replace('\n', '; ') + '}'
    if hasattr(value, '__len__') and not isinstance(value, str):
        return repr(list(value))
    return repr(value)
