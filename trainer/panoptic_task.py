"""The panoptic task (Panoptic-DeepLab heads): its loss function and evaluator from an ExperimentOptions config."""

from typing import Callable, Dict, Tuple

import keras
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial import config_utils
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.model import builder
from deeplab_axial.model.loss.panoptic_deeplab_loss import PanopticDeepLabLoss
from deeplab_axial.protos import config_pb2
from trainer import panoptic_eval

OUTPUT_KEYS = (common.TOTAL_LOSS, common.SEMANTIC_LOSS, common.CENTER_LOSS, common.REGRESSION_LOSS)


def build_loss(config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor) -> PanopticDeepLabLoss:
    """PanopticDeepLabLoss with trainer_options.loss_options' weights and the semantic loss' top_k_percent."""
    losses = config.trainer_options.loss_options
    return PanopticDeepLabLoss(
        ignore_label=descriptor.ignore_label, semantic_loss_weight=losses.semantic_loss.weight,
        center_loss_weight=losses.center_loss.weight, regression_loss_weight=losses.regression_loss.weight,
        top_k_percent=losses.semantic_loss.top_k_percent)


def make_loss_fn(config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor,
                 model: keras.Model) -> Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]:
    """loss_fn(batch) -> per-example {total_loss, semantic_loss, center_loss, regression_loss} [batch]."""
    loss = build_loss(config, descriptor)

    def loss_fn(inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        return loss(inputs, model(inputs[common.IMAGE], training=True))

    return loss_fn


def build_evaluator(config: config_pb2.ExperimentOptions, descriptor: DatasetDescriptor,
                    strategy: tf.distribute.Strategy, model: keras.Model, crop_size: Tuple[int, int],
                    experiment_dir: str, global_step: tf.Variable) -> panoptic_eval.PanopticEval:
    """PQ / AP / mIoU evaluation with the evaluator_options' post-processing, scales, flips and output options, and
    the training loss on the eval images."""
    options = config.evaluator_options
    return panoptic_eval.PanopticEval(
        strategy, model, builder.build_post_processor(config, descriptor), descriptor,
        config.eval_dataset_options.batch_size, crop_size, experiment_dir, global_step,
        save_predictions=options.save_predictions, num_vis_samples=min(options.num_vis_samples, 3),
        scales=config_utils.eval_scales(options), flip=options.add_flipped_images, loss=build_loss(config, descriptor))
