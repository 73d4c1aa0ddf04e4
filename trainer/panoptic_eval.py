"""Panoptic evaluation inside training and standalone (the controller's Evaluator for panoptic tasks).

Per eval batch (any batch size, all replicas, `trainer/replica_eval.py`): the model and Panoptic-DeepLab
post-processing run through the shared `inference_path.panoptic_predictions` (the path export and
predict use; with evaluator_options.eval_scales / add_flipped_images it averages the raw outputs over the rescaled
and mirrored batch first, as deeplab2's evaluator does), then per example `restore_to_image_size` crops the
prediction to `size_resized` and resizes it to `size_raw`, and `evaluation.PanopticEvaluator` compares it with the
raw labels (`panoptic_raw[:h, :w]`): PQ/SQ/RQ (All, Things, Stuff), mask AP from `instance_scores`, mIoU from
`semantic_pred`.

Results use deeplab2's TensorBoard names (`evaluation/pq/PQ`, `evaluation/ap/AP_Mask`, `evaluation/iou/IoU`, ...),
go to experiment_dir/eval_results.json, and a few "prediction | ground truth" overlays go to the eval summaries.
With `save_predictions`, every prediction is written in COCO panoptic format (experiment_dir/predictions/
panoptic_pred/*.png + panoptic_pred.json) so that `python -m evaluation.evaluate` can score it.

With several workers each evaluates its share of the records (trainer/sharded_eval.py) and the metrics are those of
one process; the chief alone writes eval_results.json, summaries and predictions (the other workers' PNGs travel
to it with their overlaps).
"""

import math
import os
import shutil
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from deeplab_axial import atomic_files
from deeplab_axial import common
from deeplab_axial import vis
from deeplab_axial.data import coco_panoptic_format
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.inference import inference_path
from evaluation import metrics as metric_table
from evaluation.panoptic_evaluator import PanopticEvaluator
from trainer import cluster
from trainer import eval_results
from trainer import replica_eval
from trainer import sharded_eval

PREDICTIONS_DIR = 'predictions'
PREDICTIONS_NAME = 'panoptic_pred'
_PRED_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY, common.PRED_INSTANCE_SCORES_KEY)


def _image_id(name: str):
    """COCO ids are the integer file names ('000000000139' -> 139); other datasets keep the name."""
    return int(name) if name.isdigit() else name


class PanopticEval:
    """Evaluator (reset/update/result) of a panoptic model.

    Args:
      strategy: the strategy the model was built under.
      model: the panoptic model (called with training=False: drop path and BN updates off).
      post_processor: `deeplab_axial.model.builder.build_post_processor(...)`.
      descriptor: the eval dataset.
      batch_size: the global eval batch size (each of W workers gets batches of ceil(batch_size / W)).
      crop_size: (height, width) of the eval images (the model's static input size).
      experiment_dir: where eval_results.json, eval summaries and predictions go.
      global_step: the controller's step variable (names the pass in files and summaries).
      save_predictions: also write COCO panoptic PNGs + JSON of every prediction.
      num_vis_samples: rendered predictions per pass in the eval summaries.
      metrics: names in the metric table (evaluation/metrics.py).
      scales: input scales whose raw outputs are averaged before post-processing (evaluator_options.eval_scales).
      flip: also average over horizontally flipped images (evaluator_options.add_flipped_images).
    """

    def __init__(self, strategy: tf.distribute.Strategy, model, post_processor, descriptor: DatasetDescriptor,
                 batch_size: int, crop_size: Tuple[int, int], experiment_dir: str, global_step: tf.Variable, *,
                 save_predictions: bool = False, num_vis_samples: int = 3,
                 metrics: Sequence[str] = ('pq', 'ap', 'miou'), scales: Sequence[float] = (1.0,),
                 flip: bool = False):
        self._model = model
        self._scales = tuple(scales)
        self._flip = flip
        self._post_processor = post_processor
        self._descriptor = descriptor
        self._crop_size = tuple(crop_size)
        self._experiment_dir = experiment_dir
        self._global_step = global_step
        self._save_predictions = save_predictions
        self._num_vis_samples = num_vis_samples
        self._metrics_names = tuple(metrics)
        self._strategy = strategy
        self._worker = cluster.worker_info(strategy)
        self._runner = replica_eval.ReplicaRunner(strategy, self._predict,
                                                  math.ceil(batch_size / self._worker.num_workers))
        self._writer = (tf.summary.create_file_writer(os.path.join(experiment_dir, 'eval')) if self._worker.is_chief
                        else tf.summary.create_noop_writer())
        self._scratch = None
        self.last_results: Dict[str, float] = {}
        self.reset()

    @property
    def predictions_dir(self) -> str:
        return os.path.join(self._experiment_dir, PREDICTIONS_DIR)

    @property
    def _png_dir(self) -> str:
        """Where this worker writes prediction PNGs: model_dir on the chief, a scratch folder elsewhere."""
        if self._worker.is_chief:
            return os.path.join(self.predictions_dir, PREDICTIONS_NAME)
        if self._scratch is None:
            self._scratch = tempfile.mkdtemp(prefix=f'deeplab_axial_worker{self._worker.index}_predictions_')
        return self._scratch

    def _predict(self, inputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        images = tf.ensure_shape(inputs[common.IMAGE], [None, *self._crop_size, 3])
        predictions = inference_path.panoptic_predictions(self._model, self._post_processor, images, self._scales,
                                                          self._flip)
        return {k: predictions[k] for k in _PRED_KEYS}

    def reset(self) -> None:
        evaluator = sharded_eval.OverlapRecorder if self._worker.num_workers > 1 else PanopticEvaluator
        self._evaluator = evaluator.from_descriptor(self._descriptor, self._metrics_names)
        self._vis: List[np.ndarray] = []
        self._annotations: List[dict] = []

    def update(self, batch: Dict[str, tf.Tensor]) -> None:
        images = batch[common.IMAGE]
        if tuple(images.shape[1:3]) != self._crop_size:
            raise ValueError(f'Eval images are {tuple(images.shape[1:3])} but the model input is {self._crop_size}: '
                             'eval_dataset_options.crop_size must cover every (resized) eval image')
        predictions = self._runner({common.IMAGE: images})
        sizes_raw = batch[common.GT_SIZE_RAW].numpy()
        sizes_resized = batch[common.GT_SIZE_RESIZED].numpy()
        names = [n.decode('utf-8') for n in batch[common.IMAGE_NAME].numpy()]
        panoptic_raw = batch[common.GT_PANOPTIC_RAW].numpy()
        for i, name in enumerate(names):
            height, width = sizes_raw[i]
            example = {k: tf.convert_to_tensor(v[i]) for k, v in predictions.items()}
            restored = {k: np.asarray(v) for k, v in
                        inference_path.restore_to_image_size(example, sizes_resized[i], sizes_raw[i]).items()}
            self._evaluator.update(panoptic_raw[i, :height, :width], restored[common.PRED_PANOPTIC_KEY],
                                   restored[common.PRED_INSTANCE_SCORES_KEY], [name],
                                   restored[common.PRED_SEMANTIC_KEY])
            if self._save_predictions:
                png = os.path.join(self._png_dir, os.path.basename(name) + '.png')
                self._annotations.append(coco_panoptic_format.write_coco_panoptic(
                    restored[common.PRED_PANOPTIC_KEY], self._descriptor, png, _image_id(name),
                    restored[common.PRED_INSTANCE_SCORES_KEY]))
            if len(self._vis) < self._num_vis_samples:
                rh, rw = sizes_resized[i]
                image = np.clip(np.round(images[i, :rh, :rw].numpy()), 0, 255).astype(np.uint8)
                self._vis.append(vis.prediction_vs_ground_truth(
                    image, predictions[common.PRED_PANOPTIC_KEY][i, :rh, :rw],
                    batch[common.GT_PANOPTIC_KEY][i, :rh, :rw].numpy(), self._descriptor))

    def _merge_workers(self) -> Tuple[PanopticEvaluator, List[dict]]:
        """All workers' images in one evaluator and their annotations in record order (a collective); the
        chief writes the other workers' prediction PNGs."""
        pngs = []
        if self._scratch is not None:
            for annotation in self._annotations:
                with open(os.path.join(self._scratch, annotation['file_name']), 'rb') as f:
                    pngs.append(f.read())
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None
        parts = cluster.gather_objects(self._strategy, self._worker, (self._evaluator, self._annotations, pngs))
        merged = sharded_eval.merge_in_record_order([evaluator for evaluator, _, _ in parts])
        count = len(parts)
        annotations = [parts[k % count][1][k // count] for k in range(sum(len(p[1]) for p in parts))]
        if self._worker.is_chief:
            for _, worker_annotations, worker_pngs in parts[1:]:
                for annotation, data in zip(worker_annotations, worker_pngs):
                    path = os.path.join(self._png_dir, annotation['file_name'])
                    atomic_files.write_atomically(path, lambda f, data=data: f.write(data))
        return merged, annotations

    def result(self) -> Dict[str, float]:
        evaluator, annotations = self._evaluator, self._annotations
        if self._worker.num_workers > 1:
            evaluator, annotations = self._merge_workers()
        details = evaluator.result()
        metrics = metric_table.summaries(details)
        step = int(self._global_step.numpy())
        self.last_results = metrics
        if not self._worker.is_chief:
            return metrics
        eval_results.write_eval_results(self._experiment_dir, step, metrics,
                                        {k: {n: v for n, v in d.items() if n != 'per_class'}
                                         for k, d in details.items()})
        eval_results.write_image_summaries(self._writer, 'vis/prediction_vs_ground_truth', self._vis, step)
        if self._save_predictions:
            coco_panoptic_format.write_panoptic_json(
                os.path.join(self.predictions_dir, PREDICTIONS_NAME + '.json'), annotations,
                coco_panoptic_format.categories_from_descriptor(self._descriptor))
        return metrics
