"""Reads deeplab2 checkpoints (Axial-ResNet / Axial-DeepLab) into our models.

deeplab2 saves `tf.train.Checkpoint(**model.checkpoint_items)` from tf-keras layers, so its keys are tf-keras
attribute paths (`encoder/_stage2/_block1/_attention/_height_axis/qkv_kernel`) that a Keras 3 object graph does not
reproduce. This module maps each variable of our checkpoint items to its deeplab2 key and value layout (the attention
batch norms keep deeplab2's broadcast shapes, [3, 1, heads, 1, 1] and [2, 1, heads, 1, depth], which hold our
[3, heads] and [2, heads * depth] in the same order), checks every shape and that no deeplab2 variable of a read item
is left over, and only then assigns.

Items: our `encoder` is deeplab2's `encoder`; our `decoder` is its semantic and instance decoders and the three heads
without their last layers (Panoptic-DeepLab with `aspp_use_only_1x1_proj_conv`, as deeplab2's Axial-DeepLab configs);
`semantic_last_layer` and `instance_last_layer` are its last layers. deeplab2 has no classification head.

deeplab2's encoders are ours built with `DEEPLAB2_LAYOUT`: no max-pool after the stem (res2's first block strides
instead), stem channels not scaled by the width multiplier (deeplab2's default stem_width_multiplier 1), and the
shortcut of a strided block whose channels do not change subsampled rather than projected. The outputs then agree for
odd input sizes (deeplab2's 513, 1025, 641, ...): for an even size, deeplab2 pads a strided conv on both sides and
Keras 'same' padding only at the end.
"""

import re
from typing import Dict, List, Mapping

import keras
import numpy as np
import tensorflow as tf

from deeplab_axial import common

DEEPLAB2_LAYOUT = dict(stem_pool=False, stem_width_multiplier=1.0, project_strided_shortcut=False)
_VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_DEEPLAB2_ENCODER = re.compile('encoder/_(stem|stage[1-5])/')
# Our first path component in the encoder (a stem layer) -> deeplab2's attribute path.
_STEM_NAMES = {'stem_conv': '_stem', 'stem_conv1': '_stem/_conv1_bn_act', 'stem_conv2': '_stem/_conv2_bn_act',
               'stem_conv3': '_stem/_conv3_bn'}
# Our first path component in the decoder or a last layer -> deeplab2's checkpoint item (and attribute path).
_TOP_NAMES = {'semantic_decoder': 'semantic_decoder', 'instance_decoder': 'instance_decoder',
              'semantic_head': 'semantic_head_without_last_layer/_conv1_bn_act',
              'center_head': 'instance_center_head_without_last_layer/_conv1_bn_act',
              'offset_head': 'instance_regression_head_without_last_layer/_conv1_bn_act',
              'center_last_layer': 'instance_center_head_last_layer',
              'offset_last_layer': 'instance_regression_head_last_layer'}
# Our layer and variable names below those -> deeplab2's.
_INNER_NAMES = {'conv1': '_conv1_bn_act', 'conv3': '_conv3_bn', 'shortcut': '_shortcut', 'attention': '_attention',
                'height_axis': '_height_axis', 'width_axis': '_width_axis', 'conv': '_conv',
                'batch_norm': '_batch_norm', 'batch_norm_qkv': '_batch_norm_qkv',
                'batch_norm_similarity': '_batch_norm_similarity',
                'batch_norm_retrieved_output': '_batch_norm_retrieved_output', 'qkv_kernel': 'qkv_kernel',
                'query_rpe': '_query_rpe/embeddings', 'key_rpe': '_key_rpe/embeddings',
                'value_rpe': '_value_rpe/embeddings', 'aspp_projection': '_aspp/_proj_conv_bn_act',
                'low_level_projection1': '_low_level_conv1', 'low_level_projection2': '_low_level_conv2',
                'fusion1': '_fusion_conv1/_conv1_bn_act', 'fusion2': '_fusion_conv2/_conv1_bn_act',
                'depthwise': '_depthwise', 'pointwise': '_pointwise', 'depthwise_conv': '_depthwise_conv',
                'kernel': 'kernel', 'bias': 'bias', 'gamma': 'gamma', 'beta': 'beta', 'moving_mean': 'moving_mean',
                'moving_variance': 'moving_variance'}
# Our checkpoint item -> the deeplab2 items it is read from.
DEEPLAB2_ITEMS = {
    common.CKPT_ENCODER: ('encoder',),
    common.CKPT_DECODER: ('semantic_decoder', 'instance_decoder', 'semantic_head_without_last_layer',
                          'instance_center_head_without_last_layer', 'instance_regression_head_without_last_layer'),
    common.CKPT_SEMANTIC_LAST_LAYER: ('semantic_last_layer',),
    common.CKPT_INSTANCE_LAST_LAYER: ('instance_center_head_last_layer', 'instance_regression_head_last_layer')}


def deeplab2_key(path: str, item: str = common.CKPT_ENCODER) -> str:
    """The deeplab2 checkpoint key of the variable at `path` inside our checkpoint item `item`.

    Args:
      path: relative to the item's layer, e.g. 'res2_block1/attention/height_axis/query_rpe' in the encoder,
        'semantic_decoder/fusion1/depthwise/depthwise_conv/kernel' in the decoder, 'kernel' in semantic_last_layer.
      item: one of `DEEPLAB2_ITEMS`.

    Raises:
      ValueError: a name with no deeplab2 counterpart (e.g. the axial stem, which deeplab2's Axial-ResNets lack).
    """
    first, *rest = path.split('/')
    if item == common.CKPT_ENCODER and first in _STEM_NAMES:
        parts = ['encoder', _STEM_NAMES[first]]
    elif item == common.CKPT_ENCODER and first.startswith('res') and '_block' in first:
        stage, block = first[len('res'):].split('_block')
        parts = ['encoder', f'_stage{stage}/_block{block}']
    elif item in (common.CKPT_DECODER, common.CKPT_INSTANCE_LAST_LAYER) and first in _TOP_NAMES:
        parts = [_TOP_NAMES[first]]
    elif item == common.CKPT_SEMANTIC_LAST_LAYER:
        parts, rest = ['semantic_last_layer'], [first] + rest
    else:
        raise ValueError(f'deeplab2 checkpoint: our {item} layer {first!r} has no deeplab2 counterpart (the encoder '
                         'converts with a conv or inception stem, not the axial stem)')
    for parent, name in zip([first] + rest, rest):
        if name not in _INNER_NAMES:
            raise ValueError(f'deeplab2 checkpoint: no deeplab2 name for {name!r} in {item} {path!r}')
        parts.append('depthwise_kernel' if (parent, name) == ('depthwise_conv', 'kernel') else _INNER_NAMES[name])
    return '/'.join(parts) + _VALUE_SUFFIX


def is_deeplab2_checkpoint(prefix: str) -> bool:
    """True when the checkpoint holds a deeplab2 encoder (tf-keras names of its stem and stages)."""
    return any(_DEEPLAB2_ENCODER.match(key) for key, _ in tf.train.list_variables(prefix))


def _relative_path(variable, layer: keras.layers.Layer) -> str:
    parts = variable.path.split('/')
    return '/'.join(parts[parts.index(layer.name) + 1:])


def _top_level_items(prefix: str) -> List[str]:
    return sorted({key.split('/')[0] for key, _ in tf.train.list_variables(prefix)})


def readable_items(prefix: str) -> List[str]:
    """Our checkpoint items whose deeplab2 items the checkpoint holds (e.g. only the encoder in an ImageNet one)."""
    present = set(_top_level_items(prefix))
    return [ours for ours, theirs in DEEPLAB2_ITEMS.items() if present.issuperset(theirs)]


def load_deeplab2_checkpoint(items: Mapping[str, keras.layers.Layer], prefix: str) -> Dict[str, str]:
    """Assigns every variable of our built checkpoint items from a deeplab2 checkpoint.

    Args:
      items: some of a model's `checkpoint_items` (names from `DEEPLAB2_ITEMS`), built; the encoder with
        `DEEPLAB2_LAYOUT` and the checkpoint's widths and block counts, the decoder with its channels.
      prefix: the checkpoint prefix (callers resolve a folder to its newest checkpoint and check it exists).

    Returns:
      {our variable's path: deeplab2 key} of what was assigned.

    Raises:
      ValueError: an item with no deeplab2 counterpart or not built, the encoder not in deeplab2's layout, the
        checkpoint missing a variable, a shape that differs, or a deeplab2 variable of a read item with no
        counterpart here; nothing is assigned then.
    """
    for name, layer in items.items():
        if name not in DEEPLAB2_ITEMS:
            raise ValueError(f'deeplab2 checkpoint: our {name!r} has no deeplab2 counterpart (readable: '
                             f'{sorted(DEEPLAB2_ITEMS)})')
        if not layer.built:
            raise ValueError(f'deeplab2 checkpoint: build the model first ({name!r} is not built)')
    encoder = items.get(common.CKPT_ENCODER)
    if encoder is not None:
        # The max-pool has no variables, so a wrong layout would load without complaint and compute something else.
        layout = {name: getattr(encoder, name) for name in DEEPLAB2_LAYOUT if name != 'stem_width_multiplier'}
        if any(value != DEEPLAB2_LAYOUT[name] for name, value in layout.items()):
            raise ValueError(f'deeplab2 checkpoint: the encoder has {layout}; deeplab2 checkpoints need it built with '
                             f'DEEPLAB2_LAYOUT {DEEPLAB2_LAYOUT} (model_options.backbone.deeplab2_layout: true)')
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    values, assigned = [], {}
    for name, layer in sorted(items.items()):
        theirs = {key for key in shapes if key.split('/')[0] in DEEPLAB2_ITEMS[name] and key.endswith(_VALUE_SUFFIX)}
        if not theirs:
            raise ValueError(f'deeplab2 checkpoint {prefix}: no variables of {DEEPLAB2_ITEMS[name]} (for our '
                             f'{name!r}); its top-level items are {_top_level_items(prefix)}')
        mine = {}
        for variable in layer.weights:
            path = _relative_path(variable, layer)
            key = deeplab2_key(path, name)
            if key not in shapes:
                raise ValueError(f'deeplab2 checkpoint {prefix}: no {key!r} for our {name} {path!r} (a different '
                                 'layout? build the model with the checkpoint\'s widths and block counts, the encoder '
                                 'with DEEPLAB2_LAYOUT)')
            value = reader.get_tensor(key)
            if value.size != np.prod(variable.shape):
                raise ValueError(f'deeplab2 checkpoint {prefix}: {key!r} has shape {list(value.shape)}, our {name} '
                                 f'{path!r} expects {list(variable.shape)}')
            values.append((variable, value.reshape(variable.shape)))
            mine[variable.path] = key
        left_over = sorted(theirs - set(mine.values()))
        if left_over:
            examples = ', '.join(key[:-len(_VALUE_SUFFIX)] for key in left_over[:5])
            raise ValueError(f'deeplab2 checkpoint {prefix}: {len(left_over)} variables have no counterpart in our '
                             f'{name} (a different layout, width or block count?), e.g. {examples}')
        assigned.update(mine)
    for variable, value in values:
        variable.assign(value.astype(variable.dtype))
    return assigned
