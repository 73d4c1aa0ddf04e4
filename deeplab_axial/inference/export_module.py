"""The tf.Modules a SavedModel export serves: uint8 images of any size in, the prediction contract out.

`serving_default(image: uint8 [height, width, 3])` and `serve_batch(images: uint8 [batch, height, width, 3])`.
Axial models have a static input size (the eval crop size), so the panoptic signatures run the evaluator's path,
`inference_path`: fit each image into the input size (resize-to-range, down-scale if still too large,
pad with 127.5), model + post-processing at the input size, then crop and resize every output back to the image
size. The config's evaluator_options.eval_scales and add_flipped_images are part of the model, as in deeplab2's
export: the raw outputs are averaged over the rescaled and mirrored inputs (`multi_scale`) before post-processing.
The outputs are the post-processing keys (`panoptic_pred`, `semantic_pred`, `instance_pred`, `instance_scores`,
`instance_center_pred`, `semantic_probs`, `center_heatmap`, `offset_map`) with a batch dimension. Classification
signatures resize and centre-crop as the eval pipeline does and return `logits`, `top5_classes` and `top5_probs`
(with scales or flips: `logits` are the log of the averaged probabilities).

Only standard TensorFlow ops are used, so the export loads with `tf.saved_model.load` alone. With `jit_compile`
the static-size part (model + post-processing) is compiled with XLA; the default graph has no XLA clusters.
The modules track the model's variables, not the Keras objects: the SavedModel then holds the two signatures and
the weights only, which makes saving and loading several times faster.
"""

from typing import Callable, Dict, List, Mapping, Sequence, Tuple

import keras
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import preprocessing
from deeplab_axial.inference import inference_path
from deeplab_axial.model.post_processor.panoptic_deeplab import PostProcessor

PANOPTIC_OUTPUT_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY, common.PRED_INSTANCE_KEY,
                        common.PRED_INSTANCE_SCORES_KEY, common.PRED_INSTANCE_CENTER_KEY,
                        common.PRED_SEMANTIC_PROBS_KEY, common.PRED_CENTER_HEATMAP_KEY, common.PRED_OFFSET_MAP_KEY)
_INT_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY, common.PRED_INSTANCE_KEY)
_IMAGE_SPEC = tf.TensorSpec([None, None, 3], tf.uint8, name='image')
_IMAGES_SPEC = tf.TensorSpec([None, None, None, 3], tf.uint8, name='images')


def _inference_call(model: keras.Model) -> Callable[[tf.Tensor], Dict[str, tf.Tensor]]:
    """`model(images, training=False)` as a plain function (a module attribute holding it is not tracked)."""

    def call(images: tf.Tensor, training: bool = False) -> Dict[str, tf.Tensor]:
        return model(images, training=training)

    return call


def _model_variables(model: keras.Model) -> List[tf.Variable]:
    """The tf.Variables behind the Keras variables, for the module to track (and the SavedModel to store)."""
    return [v.value for v in model.variables]


def _output_spec(num_classes: int) -> Dict[str, tf.TensorSpec]:
    """Per-example output specs at a dynamic image size (for tf.map_fn)."""
    specs = {}
    for key in PANOPTIC_OUTPUT_KEYS:
        shape = [None, None]
        if key == common.PRED_SEMANTIC_PROBS_KEY:
            shape.append(num_classes)
        elif key == common.PRED_OFFSET_MAP_KEY:
            shape.append(2)
        specs[key] = tf.TensorSpec(shape, tf.int32 if key in _INT_KEYS else tf.float32)
    return specs


class _ExportModule(tf.Module):
    """The two serving signatures over a subclass's `predict(images uint8 [batch, height, width, 3])`."""

    def __init__(self, model: keras.Model, name: str):
        super().__init__(name=name)
        self._model = _inference_call(model)
        self.model_variables = _model_variables(model)

    @tf.function(input_signature=[_IMAGE_SPEC])
    def serving_default(self, image: tf.Tensor) -> Dict[str, tf.Tensor]:
        return self.serve_batch(image[tf.newaxis])  # One trace of the model for both signatures.

    @tf.function(input_signature=[_IMAGES_SPEC])
    def serve_batch(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        return self.predict(images)


class PanopticExportModule(_ExportModule):
    """Panoptic signatures over a restored Axial-DeepLab.

    Args:
      model: the built, restored panoptic model (static input size `input_size`).
      post_processor: Panoptic-DeepLab post-processing.
      input_size: (height, width) the model was built for.
      resize_options: `fit_to_input_size` resize-to-range keywords (the eval dataset's).
      jit_compile: compile model + post-processing at the input size with XLA.
      scales: input scales whose raw outputs are averaged before post-processing (evaluator_options.eval_scales).
      flip: also average over mirrored inputs (evaluator_options.add_flipped_images).
    """

    def __init__(self, model: keras.Model, post_processor: PostProcessor, input_size: Sequence[int],
                 resize_options: Mapping[str, int], jit_compile: bool = False, scales: Sequence[float] = (1.0,),
                 flip: bool = False):
        super().__init__(model, name='deeplab_axial_panoptic')
        self._post_processor = post_processor
        self._input_size = tuple(int(s) for s in input_size)
        self._scales = tuple(float(s) for s in scales)
        self._flip = bool(flip)
        # Tuples, not dicts: tf.Module would wrap dicts for tracking, and wrapped dicts do not trace as outputs.
        self._resize_options = tuple(sorted(resize_options.items()))
        self._predict_at_input_size = tf.function(self._predict_fn, jit_compile=True) if jit_compile \
            else self._predict_fn

    def _predict_fn(self, padded: tf.Tensor) -> Dict[str, tf.Tensor]:
        predictions = inference_path.panoptic_predictions(self._model, self._post_processor, padded, self._scales,
                                                          self._flip)
        return {key: predictions[key] for key in PANOPTIC_OUTPUT_KEYS}

    def _fit(self, image: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
        return inference_path.fit_to_input_size(image, self._input_size, **dict(self._resize_options))

    def predict(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        """uint8 [batch, height, width, 3] (one size) -> predictions [batch, height, width, ...]."""
        padded, resized_sizes = tf.map_fn(
            self._fit, images, fn_output_signature=(tf.TensorSpec(self._input_size + (3,), tf.float32),
                                                    tf.TensorSpec([2], tf.int32)))
        image_size = tf.shape(images)[1:3]
        predictions = self._predict_at_input_size(padded)
        return tf.map_fn(
            lambda example: inference_path.restore_to_image_size(example[0], example[1], image_size),
            (predictions, resized_sizes), fn_output_signature=_output_spec(self._post_processor.num_classes))


class ClassificationExportModule(_ExportModule):
    """Classification signatures over a restored Axial-ResNet.

    Args:
      model: the built, restored classifier.
      input_size: (height, width) of the eval crop.
      jit_compile: compile the model at the input size with XLA.
      scales: input scales whose class probabilities are averaged (evaluator_options.eval_scales).
      flip: also average over mirrored inputs (evaluator_options.add_flipped_images).
    """

    def __init__(self, model: keras.Model, input_size: Sequence[int], jit_compile: bool = False,
                 scales: Sequence[float] = (1.0,), flip: bool = False):
        super().__init__(model, name='deeplab_axial_classification')
        self._input_size = tuple(int(s) for s in input_size)
        self._scales = tuple(float(s) for s in scales)
        self._flip = bool(flip)
        self._logits = tf.function(self._logits_fn, jit_compile=True) if jit_compile else self._logits_fn

    def _logits_fn(self, crops: tf.Tensor) -> tf.Tensor:
        return inference_path.classification_logits(self._model, crops, self._scales, self._flip)

    def predict(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
        """uint8 [batch, height, width, 3] -> logits [batch, classes], top-5 classes (int32) and probabilities."""
        crops = tf.map_fn(lambda image: preprocessing.classification_eval(tf.cast(image, tf.float32),
                                                                          self._input_size),
                          images, fn_output_signature=tf.TensorSpec(self._input_size + (3,), tf.float32))
        logits = tf.cast(self._logits(crops), tf.float32)
        top = tf.math.top_k(tf.nn.softmax(logits), k=min(5, int(logits.shape[-1])))
        return {common.PRED_LOGITS_KEY: logits, common.PRED_TOP5_CLASSES_KEY: tf.cast(top.indices, tf.int32),
                common.PRED_TOP5_PROBS_KEY: top.values}
