"""Reads deeplab2 checkpoints (its Axial-ResNet encoder family, Panoptic-DeepLab decoder and heads) into our models.

deeplab2 saves `tf.train.Checkpoint(**model.checkpoint_items)` from tf-keras layers, so its keys are tf-keras
attribute paths (`encoder/_stage2/_block1/_attention/_height_axis/qkv_kernel`) that a Keras 3 object graph does not
reproduce. ImageNet checkpoints trained with the TF Model Garden hold the encoder under `backbone/_encoder/` instead
of `encoder/`, which deeplab2's trainer also reads (`runner_utils.maybe_load_checkpoint`); so does this module
(`find_encoder_scope`). A trainer checkpoint's optimizer slots (`.../.OPTIMIZER_SLOT/...`) are not model variables
and are skipped. This module maps each variable of our checkpoint items to its deeplab2 key and value layout (the attention
batch norms keep deeplab2's broadcast shapes, [3, 1, heads, 1, 1] and [2, 1, heads, 1, depth], which hold our
[3, heads] and [2, heads * depth] in the same order), checks every shape and that no deeplab2 variable of a read item
is left over, and only then assigns.

Items: our `encoder` is deeplab2's `encoder`; our `decoder` is its semantic and instance decoders and the three heads
without their last layers (Panoptic-DeepLab with `aspp_use_only_1x1_proj_conv`, as deeplab2's Axial-DeepLab configs);
`semantic_last_layer` and `instance_last_layer` are its last layers. deeplab2 has no classification head.

deeplab2's encoder family (`DeepLab2AxialResNet`: resnet50, swidernet, axial_swidernet, max_deeplab_*_backbone, ...)
has deeplab2's layout and layer names by construction. deeplab2's axial_resnet_* / axial_deeplab_* encoders are our
`AxialResNet` built with `DEEPLAB2_LAYOUT`: no max-pool after the stem (res2's first block strides instead), stem
channels not scaled by the width multiplier (deeplab2's default stem_width_multiplier 1), the shortcut of a strided
block whose channels do not change subsampled rather than projected, and deeplab2's global attention on axes up to
its query_shape 129. The outputs then agree for odd input sizes (deeplab2's 513, 1025, 641, ...): for an even size,
deeplab2 pads a strided conv on both sides and Keras 'same' padding only at the end.
"""

import re
from typing import Dict, List, Mapping, Optional

import keras
import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.model.encoder.axial_resnet import AxialResNet

DEEPLAB2_LAYOUT = dict(stem_pool=False, stem_width_multiplier=1.0, project_strided_shortcut=False, query_shape=129)
# The layout arguments that change which network the variables form (checked before loading an AxialResNet); the
# stem width shows in the shapes and the attention rule is the user's choice.
_STRUCTURAL_LAYOUT = ('stem_pool', 'project_strided_shortcut')
# Where deeplab2's trainer keeps the encoder, and where Model Garden ImageNet checkpoints do.
ENCODER_SCOPES = ('encoder', 'backbone/_encoder')
_VALUE_SUFFIX = '/.ATTRIBUTES/VARIABLE_VALUE'
_OPTIMIZER_SLOT = '/.OPTIMIZER_SLOT/'
_DEEPLAB2_ENCODER = re.compile('(backbone/_)?encoder/_(stem|stage[1-5]|decoder_stage[0-9]+)/')
# Our first path component in the encoder (a stem layer) -> deeplab2's attribute path.
_STEM_NAMES = {'stem_conv': '_stem', 'stem_conv1': '_stem/_conv1_bn_act', 'stem_conv2': '_stem/_conv2_bn_act',
               'stem_conv3': '_stem/_conv3_bn', 'stem': '_stem'}
# Our blocks: res<n>_block<m> and decoder_stage<n>_block<m>; the stacked decoder's fusions.
_BLOCK = re.compile(r'(res|decoder_stage)([0-9]+)_block([0-9]+)$')
_FUSE = re.compile(r'decoder_stage[0-9]+_resized_fuse$')
# Layers named as deeplab2's attributes without the leading underscore (conv blocks, stems, SAC, SE, fusions).
_DEEPLAB2_NAMED = re.compile(r'(conv1_bn_act|conv2_bn_act|conv2_bn|conv3_bn|squeeze_and_excite|se_conv|'
                             r'pre_global_context|post_global_context|switch|(strided|resized)_conv_bn[0-9]+)$')
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
                'moving_variance': 'moving_variance', 'convolution': 'convolution'}
# Our checkpoint item -> the deeplab2 items it is read from.
DEEPLAB2_ITEMS = {
    common.CKPT_ENCODER: ('encoder',),
    common.CKPT_DECODER: ('semantic_decoder', 'instance_decoder', 'semantic_head_without_last_layer',
                          'instance_center_head_without_last_layer', 'instance_regression_head_without_last_layer'),
    common.CKPT_SEMANTIC_LAST_LAYER: ('semantic_last_layer',),
    common.CKPT_INSTANCE_LAST_LAYER: ('instance_center_head_last_layer', 'instance_regression_head_last_layer')}


def deeplab2_key(path: str, item: str = common.CKPT_ENCODER, encoder_scope: str = 'encoder') -> str:
    """The deeplab2 checkpoint key of the variable at `path` inside our checkpoint item `item`.

    Args:
      path: relative to the item's layer, e.g. 'res2_block1/attention/height_axis/query_rpe' in the encoder,
        'semantic_decoder/fusion1/depthwise/depthwise_conv/kernel' in the decoder, 'kernel' in semantic_last_layer.
      item: one of `DEEPLAB2_ITEMS`.
      encoder_scope: where the checkpoint keeps the encoder, one of `ENCODER_SCOPES`.

    Raises:
      ValueError: a name with no deeplab2 counterpart (e.g. the axial stem, which deeplab2's Axial-ResNets lack).
    """
    first, *rest = path.split('/')
    block = _BLOCK.match(first)
    if item == common.CKPT_ENCODER and first in _STEM_NAMES:
        parts = [encoder_scope, _STEM_NAMES[first]]
    elif item == common.CKPT_ENCODER and block:
        prefix, stage, index = block.groups()
        parts = [encoder_scope, f'_{"stage" if prefix == "res" else prefix}{stage}/_block{index}']
    elif item == common.CKPT_ENCODER and _FUSE.match(first):
        parts = [encoder_scope, '_' + first]
    elif item in (common.CKPT_DECODER, common.CKPT_INSTANCE_LAST_LAYER) and first in _TOP_NAMES:
        parts = [_TOP_NAMES[first]]
    elif item == common.CKPT_SEMANTIC_LAST_LAYER:
        parts, rest = ['semantic_last_layer'], [first] + rest
    else:
        raise ValueError(f'deeplab2 checkpoint: our {item} layer {first!r} has no deeplab2 counterpart (the encoder '
                         'converts with a conv or inception stem, not the axial stem)')
    for parent, name in zip([first] + rest, rest):
        if (parent, name) == ('depthwise_conv', 'kernel'):
            parts.append('depthwise_kernel')
        elif _DEEPLAB2_NAMED.match(name):
            parts.append('_' + name)
        elif name in _INNER_NAMES:
            parts.append(_INNER_NAMES[name])
        else:
            raise ValueError(f'deeplab2 checkpoint: no deeplab2 name for {name!r} in {item} {path!r}')
    return '/'.join(parts) + _VALUE_SUFFIX


def is_deeplab2_checkpoint(prefix: str) -> bool:
    """True when the checkpoint holds a deeplab2 encoder (tf-keras names of its stem and stages), also under Model
    Garden's `backbone/_encoder/`."""
    return any(_DEEPLAB2_ENCODER.match(key) for key, _ in tf.train.list_variables(prefix))


def find_encoder_scope(prefix: str) -> str:
    """Where the checkpoint keeps its encoder: 'encoder' (deeplab2's trainer) or 'backbone/_encoder' (Model
    Garden); 'encoder' when it holds none."""
    keys = [key for key, _ in tf.train.list_variables(prefix)]
    return ENCODER_SCOPES[1] if any(key.startswith(ENCODER_SCOPES[1] + '/') for key in keys) else ENCODER_SCOPES[0]


def _relative_path(variable, layer: keras.layers.Layer) -> str:
    parts = variable.path.split('/')
    return '/'.join(parts[parts.index(layer.name) + 1:])


def _top_level_items(prefix: str) -> List[str]:
    return sorted({key.split('/')[0] for key, _ in tf.train.list_variables(prefix)})


def _items_of(scope: str) -> Dict[str, tuple]:
    """Our item -> the deeplab2 key prefixes it is read from, for an encoder kept under `scope`."""
    return dict(DEEPLAB2_ITEMS, **{common.CKPT_ENCODER: (scope,)})


def readable_items(prefix: str) -> List[str]:
    """Our checkpoint items whose deeplab2 items the checkpoint holds (e.g. only the encoder in an ImageNet one)."""
    keys = [key for key, _ in tf.train.list_variables(prefix)]
    items = _items_of(find_encoder_scope(prefix))
    return [ours for ours, theirs in items.items()
            if all(any(key.startswith(item + '/') for key in keys) for item in theirs)]


def load_deeplab2_checkpoint(items: Mapping[str, keras.layers.Layer], prefix: str,
                             encoder_scope: Optional[str] = None) -> Dict[str, str]:
    """Assigns every variable of our built checkpoint items from a deeplab2 checkpoint.

    Args:
      items: some of a model's `checkpoint_items` (names from `DEEPLAB2_ITEMS`), built; the encoder with the
        checkpoint's widths and block counts (an `AxialResNet` with `DEEPLAB2_LAYOUT`), the decoder with its channels.
      prefix: the checkpoint prefix (callers resolve a folder to its newest checkpoint and check it exists).
      encoder_scope: where the checkpoint keeps the encoder (`ENCODER_SCOPES`); None finds it.

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
    if isinstance(encoder, AxialResNet):
        # The max-pool has no variables, so a wrong layout would load without complaint and compute something else.
        layout = {name: getattr(encoder, name) for name in _STRUCTURAL_LAYOUT}
        if any(value != DEEPLAB2_LAYOUT[name] for name, value in layout.items()):
            raise ValueError(f'deeplab2 checkpoint: the encoder has {layout}; deeplab2 checkpoints need it built with '
                             f'DEEPLAB2_LAYOUT {DEEPLAB2_LAYOUT} (model_options.backbone.deeplab2_layout: true)')
    scope = encoder_scope or find_encoder_scope(prefix)
    sources = _items_of(scope)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    values, assigned = [], {}
    for name, layer in sorted(items.items()):
        theirs = {key for key in shapes if any(key.startswith(item + '/') for item in sources[name])
                  and key.endswith(_VALUE_SUFFIX) and _OPTIMIZER_SLOT not in key}
        if not theirs:
            raise ValueError(f'deeplab2 checkpoint {prefix}: no variables of {sources[name]} (for our '
                             f'{name!r}); its top-level items are {_top_level_items(prefix)}')
        mine = {}
        for variable in layer.weights:
            path = _relative_path(variable, layer)
            key = deeplab2_key(path, name, scope)
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
