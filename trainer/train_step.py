"""The per-replica train step shared by every task: losses -> gradients -> clipping -> optimizer update.

The task supplies `loss_fn(inputs) -> {name: per-example loss [batch]}` (it calls the model inside, with
training=True). Each loss is summed over the replica's examples and divided by the GLOBAL batch size, so summing
over replicas (what the controller does, and what the optimizer's all-reduce does to gradients) gives the mean
over the global batch whatever the number of replicas.
"""

from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from deeplab_axial import common
from trainer import optimizer_builder

LossFn = Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]


def make_train_step_fn(loss_fn: LossFn, trainable_variables: Sequence[tf.Variable],
                       optimizer: keras.optimizers.Optimizer, global_batch_size: int, *,
                       weight_decay: float = 0.0, clip_norm: Optional[float] = None,
                       backbone_optimizer: Optional[keras.optimizers.Optimizer] = None,
                       backbone_variables: Sequence[tf.Variable] = ()) -> Callable:
    """Builds the function the controller runs on every replica.

    Args:
      loss_fn: maps a (per-replica) batch to per-example losses [batch]; must include common.TOTAL_LOSS, the one
        that is minimised (already weighted).
      trainable_variables: the variables to train (model.trainable_variables).
      optimizer: Keras optimizer (a LossScaleOptimizer under mixed_float16). Built here, so that a checkpoint
        restored afterwards finds its slots.
      global_batch_size: examples per step over all replicas.
      weight_decay: deeplab2's L2 weight decay on kernels (`optimizer_builder.weight_decay_loss`).
      clip_norm: clip the (all-replica) gradient to this global norm; None = no clipping.
      backbone_optimizer: optional second optimizer (e.g. a scaled learning rate) for `backbone_variables`.
      backbone_variables: the variables `backbone_optimizer` updates; the others use `optimizer`.

    Returns:
      step(inputs) -> {loss name: scalar float32 share of the global mean, plus 'weight_decay_loss' and, with
      clipping, 'gradient_norm'}; summing the values over replicas gives global means.
    """
    variables = list(trainable_variables)
    backbone_ids = {id(v) for v in backbone_variables}
    if backbone_optimizer is not None and not backbone_ids:
        raise ValueError('make_train_step_fn: `backbone_optimizer` needs `backbone_variables`')
    main_variables = [v for v in variables if id(v) not in backbone_ids]
    backbone_vars = [v for v in variables if id(v) in backbone_ids]
    optimizer.build(main_variables)
    if backbone_optimizer is not None:
        backbone_optimizer.build(backbone_vars)
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def step(inputs):
        replica = tf.distribute.get_replica_context()
        num_replicas = replica.num_replicas_in_sync
        with tf.GradientTape() as tape:
            per_example = loss_fn(inputs)
            if common.TOTAL_LOSS not in per_example:
                raise KeyError(f'loss_fn must return {common.TOTAL_LOSS!r}; it returned {sorted(per_example)}')
            outputs = {k: tf.reduce_sum(tf.cast(v, tf.float32)) / global_batch_size for k, v in per_example.items()}
            # Counted once over the replicas.
            decay = optimizer_builder.weight_decay_loss(variables, weight_decay) / num_replicas
            outputs['weight_decay_loss'] = decay
            outputs[common.TOTAL_LOSS] = outputs[common.TOTAL_LOSS] + decay
            loss = optimizer.scale_loss(outputs[common.TOTAL_LOSS]) if loss_scaled else outputs[common.TOTAL_LOSS]
        grads = tape.gradient(loss, variables)
        if clip_norm is not None:
            # Clip the gradient of the global batch: sum over replicas first, clip, then hand each replica 1/N
            # of it (the optimizer sums over replicas again).
            if num_replicas > 1:
                grads = replica.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            threshold = clip_norm * optimizer.dynamic_scale if loss_scaled else clip_norm
            grads, norm = optimizer_builder.clip_gradients(grads, threshold)
            grads = [tf.math.scalar_mul(1.0 / num_replicas, g) for g in grads]  # IndexedSlices too
            outputs['gradient_norm'] = (norm / optimizer.dynamic_scale if loss_scaled else norm) / num_replicas
        by_id = {id(v): g for v, g in zip(variables, grads)}
        optimizer.apply([by_id[id(v)] for v in main_variables], main_variables)
        if backbone_optimizer is not None:
            backbone_optimizer.apply([by_id[id(v)] for v in backbone_vars], backbone_vars)
        return outputs

    return step
