"""TensorBoard summaries written with TensorFlow core only (tensorflow-cpu does not install tensorboard).

`tf.summary.scalar/image` need the tensorboard package; `tf.summary.write` does not. These helpers write the same
records with the plugin metadata TensorBoard's scalar and image dashboards read, so the event files look exactly
like tf.summary.scalar/image output once TensorBoard is installed to view them.
"""

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

# deeplab2's loss tags: 'losses/train_<loss name>' in the train summaries, 'losses/eval_<loss name>' in the eval ones.
TRAIN_LOSS_TAG = 'losses/train_'
EVAL_LOSS_TAG = 'losses/eval_'


def _metadata(plugin: str) -> bytes:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)).SerializeToString()


def scalar(name: str, value, step: int) -> None:
    """A float32 scalar for the Scalars dashboard (inside a writer's `as_default()`)."""
    tf.summary.write(name, tf.cast(tf.convert_to_tensor(value), tf.float32), step=step,
                     metadata=_metadata('scalars'))


def image(name: str, images, step: int, max_outputs: int = 3) -> None:
    """Images uint8 [batch, height, width, channels] for the Images dashboard, PNG-encoded."""
    images = tf.convert_to_tensor(images)
    if images.dtype != tf.uint8:
        raise TypeError(f'summaries.image({name!r}): images must be uint8. Received: {images.dtype}')
    images = images[:max_outputs]
    pngs = tf.map_fn(tf.io.encode_png, images, fn_output_signature=tf.string)
    shape = tf.shape(images)
    header = tf.stack([tf.as_string(shape[2]), tf.as_string(shape[1])])
    tf.summary.write(name, tf.concat([header, pngs], 0), step=step, metadata=_metadata('images'))
