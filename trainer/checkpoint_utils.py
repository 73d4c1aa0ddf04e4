"""Initialisation from `ModelOptions.initial_checkpoint` (deeplab2's `maybe_load_checkpoint`).

The controller calls the returned function only when model_dir holds no checkpoint of its own. It restores the
model's `checkpoint_items` (common.CKPT_* names: encoder, decoder, heads) from the initial checkpoint, leaving out
the last layers the config asks to re-initialise (e.g. a different number of classes), and never the optimizer or
the step: a fine-tuning run starts at step 0. A deeplab2 checkpoint (tf-keras names, `encoder/_stage2/...`, or a
Model Garden ImageNet one under `backbone/_encoder/...`) is read through `deeplab2_checkpoint` (an Axial-ResNet must
be built with backbone.deeplab2_layout; deeplab2's encoder family always has deeplab2's layout).
"""

from typing import Any, Callable, Mapping

import tensorflow as tf
from absl import logging

from deeplab_axial import common
from deeplab_axial.model import deeplab2_checkpoint, registry
from deeplab_axial.protos import model_pb2


def items_to_restore(model_options: model_pb2.ModelOptions, checkpoint_items: Mapping[str, Any]) -> dict:
    """The checkpoint items to read from the initial checkpoint, after the restore_*_last_layer options."""
    items = dict(checkpoint_items)
    if not model_options.restore_semantic_last_layer_from_initial_checkpoint:
        items.pop(common.CKPT_SEMANTIC_LAST_LAYER, None)
        items.pop(common.CKPT_CLASSIFICATION_HEAD, None)
    if not model_options.restore_instance_last_layer_from_initial_checkpoint:
        items.pop(common.CKPT_INSTANCE_LAST_LAYER, None)
    return items


def make_init_fn(model_options: model_pb2.ModelOptions,
                 checkpoint_items: Mapping[str, Any]) -> Callable[[], None]:
    """Returns init_fn for the Controller; a no-op when no initial checkpoint is configured.

    Raises (when called):
      ValueError: initial_checkpoint names neither a checkpoint prefix nor a folder holding one.
    """
    path = model_options.initial_checkpoint

    def init_fn() -> None:
        if not path:
            return
        prefix = tf.train.latest_checkpoint(path) if tf.io.gfile.isdir(path) else path
        if not prefix or not tf.io.gfile.exists(prefix + '.index'):
            raise ValueError(f'model_options.initial_checkpoint {path!r} is not a checkpoint (no {path}.index) nor '
                             'a folder holding one')
        items = items_to_restore(model_options, checkpoint_items)
        if deeplab2_checkpoint.is_deeplab2_checkpoint(prefix):
            _init_from_deeplab2(model_options, items, prefix)
            return
        in_checkpoint = {name.split('/')[0] for name, _ in tf.train.list_variables(prefix)}
        restored, absent = [], []
        for name, item in sorted(items.items()):
            # An ImageNet checkpoint has no decoder or heads; a panoptic one has no classification head.
            if name not in in_checkpoint:
                absent.append(name)
                continue
            try:
                status = tf.train.Checkpoint(**{name: item}).read(prefix)
                status.assert_existing_objects_matched()
            except (AssertionError, ValueError) as e:
                raise ValueError(
                    f'model_options.initial_checkpoint {prefix}: {name!r} does not match the model (a different '
                    'architecture, width or class count? set restore_semantic_last_layer_from_initial_checkpoint / '
                    f'restore_instance_last_layer_from_initial_checkpoint to false to re-initialise heads): {e}'
                ) from None
            status.expect_partial()
            restored.append(name)
        if not restored:
            raise ValueError(f'model_options.initial_checkpoint {prefix} holds none of {sorted(items)}; its top-level '
                             f'items are {sorted(in_checkpoint)}')
        logging.info('Initialised %s from %s (not in it: %s)', restored, prefix, absent)

    return init_fn


def _init_from_deeplab2(model_options: model_pb2.ModelOptions, items: Mapping[str, Any], prefix: str) -> None:
    """Initialises the items a deeplab2 checkpoint holds (all four of a Panoptic-DeepLab one, the encoder of an
    ImageNet one)."""
    entry = registry.MODELS.get(model_options.backbone.name)
    if not model_options.backbone.deeplab2_layout and not (entry and entry.is_deeplab2_family):
        raise ValueError(f'model_options.initial_checkpoint {prefix} is a deeplab2 checkpoint: set '
                         'model_options.backbone.deeplab2_layout: true so that the encoder has its layout')
    readable = deeplab2_checkpoint.readable_items(prefix)
    chosen = {name: item for name, item in items.items() if name in readable}
    assigned = deeplab2_checkpoint.load_deeplab2_checkpoint(chosen, prefix)
    logging.info('Initialised %s (%d variables) from the deeplab2 checkpoint %s (not read: %s)', sorted(chosen),
                 len(assigned), prefix, sorted(set(items) - set(chosen)))
