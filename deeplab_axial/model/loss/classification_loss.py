"""Softmax cross-entropy for image classification (ImageNet pre-training), one value per example."""

import tensorflow as tf


def classification_loss(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Softmax cross-entropy with optional label smoothing.

    With smoothing e the target is (1 - e) * one_hot(label) + e / num_classes (the Inception recipe).

    Args:
      labels: int [batch] class ids in [0, num_classes).
      logits: [batch, num_classes], any float dtype (the math is float32).
      label_smoothing: e in [0, 1).

    Returns:
      [batch] float32.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f'`label_smoothing` must lie in [0, 1). Received: {label_smoothing}')
    logits = tf.cast(logits, tf.float32)
    num_classes = tf.shape(logits)[-1]
    target = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    if label_smoothing:
        target = target * (1.0 - label_smoothing) + label_smoothing / tf.cast(num_classes, tf.float32)
    return tf.nn.softmax_cross_entropy_with_logits(labels=target, logits=logits)
