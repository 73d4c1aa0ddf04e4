"""The Panoptic-DeepLab loss: bootstrapped semantic cross-entropy + MSE center heatmap + L1 offsets.

Weights 1 / 200 / 0.01 and top-k 0.2 are deeplab2's Cityscapes and COCO settings. As in deeplab2
(`model/loss/loss_builder.py`) each returned term is already multiplied by its weight and `total_loss` is their sum,
so the logged terms add up to the optimised total.
"""

from typing import Any, Dict

import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.model.loss import base_loss


class PanopticDeepLabLoss:
    """Computes the three Panoptic-DeepLab losses per example.

    Args:
      ignore_label: semantic label of void pixels.
      semantic_loss_weight: weight of the semantic cross-entropy.
      center_loss_weight: weight of the center heatmap MSE.
      regression_loss_weight: weight of the offset L1.
      top_k_percent: fraction of each image's valid pixels the semantic loss averages (hard-pixel mining).
    """

    # The keys of `y_true` the loss reads (the input pipeline's targets).
    TARGET_KEYS = (common.GT_SEMANTIC_KEY, common.SEMANTIC_LOSS_WEIGHT_KEY, common.GT_INSTANCE_CENTER_KEY,
                   common.CENTER_LOSS_WEIGHT_KEY, common.GT_INSTANCE_REGRESSION_KEY, common.REGRESSION_LOSS_WEIGHT_KEY)

    def __init__(self, ignore_label: int, semantic_loss_weight: float = 1.0, center_loss_weight: float = 200.0,
                 regression_loss_weight: float = 0.01, top_k_percent: float = 0.2):
        base_loss.validate_top_k_percent(top_k_percent)
        self.ignore_label = ignore_label
        self.semantic_loss_weight = semantic_loss_weight
        self.center_loss_weight = center_loss_weight
        self.regression_loss_weight = regression_loss_weight
        self.top_k_percent = top_k_percent

    def get_config(self) -> Dict[str, Any]:
        return {
            'ignore_label': self.ignore_label,
            'semantic_loss_weight': self.semantic_loss_weight,
            'center_loss_weight': self.center_loss_weight,
            'regression_loss_weight': self.regression_loss_weight,
            'top_k_percent': self.top_k_percent,
        }

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> 'PanopticDeepLabLoss':
        return cls(**config)

    def __call__(self, y_true: Dict[str, tf.Tensor], y_pred: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Returns {semantic_loss, center_loss, regression_loss, total_loss}, each [batch] float32.

        Args:
          y_true: batched targets keyed by common.GT_* and common.*_LOSS_WEIGHT_KEY (see data/targets.py).
          y_pred: model outputs keyed by common.PRED_SEMANTIC_LOGITS_KEY, PRED_CENTER_HEATMAP_KEY ([b, h, w]) and
            PRED_OFFSET_MAP_KEY ([b, h, w, 2]).
        """
        semantic = base_loss.softmax_cross_entropy_loss(
            y_true[common.GT_SEMANTIC_KEY], y_pred[common.PRED_SEMANTIC_LOGITS_KEY],
            y_true[common.SEMANTIC_LOSS_WEIGHT_KEY], ignore_label=self.ignore_label, top_k_percent=self.top_k_percent)
        center = base_loss.mean_squared_error_loss(
            y_true[common.GT_INSTANCE_CENTER_KEY], y_pred[common.PRED_CENTER_HEATMAP_KEY],
            y_true[common.CENTER_LOSS_WEIGHT_KEY])
        regression = base_loss.mean_absolute_error_loss(
            y_true[common.GT_INSTANCE_REGRESSION_KEY], y_pred[common.PRED_OFFSET_MAP_KEY],
            y_true[common.REGRESSION_LOSS_WEIGHT_KEY])
        losses = {
            common.SEMANTIC_LOSS: semantic * self.semantic_loss_weight,
            common.CENTER_LOSS: center * self.center_loss_weight,
            common.REGRESSION_LOSS: regression * self.regression_loss_weight,
        }
        losses[common.TOTAL_LOSS] = tf.add_n(list(losses.values()))
        return losses
