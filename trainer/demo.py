r"""The README's main command: the whole product on the built-in synthetic dataset, on a CPU, in a few minutes.

    python -m trainer.demo [--output_dir demo_output] [--overwrite]

1. writes the synthetic panoptic dataset in COCO panoptic layout and converts it with the COCO converter;
2. trains `configs/synthetic/axial_deeplab_tiny.textproto` (train_and_eval: PQ/AP/mIoU at the end);
3. exports a SavedModel (`saved_model_export.export`, what `trainer.export_model` runs);
4. runs `deeplab_axial.predict` with that SavedModel on the validation images and scores its COCO panoptic output
   with `evaluation.evaluate` against the ground truth (the same numbers as step 2: one inference path);
5. writes `prediction_vs_ground_truth.png`, the first validation image's prediction beside its ground truth.
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's start-up banner would bury the demo's output.

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Dict, Sequence  # noqa: E402

import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
from PIL import Image  # noqa: E402

from deeplab_axial import atomic_files  # noqa: E402
from deeplab_axial.data import build_coco_data  # noqa: E402
from deeplab_axial.data import dataset  # noqa: E402
from deeplab_axial.data import synthetic  # noqa: E402
from deeplab_axial.inference import saved_model_export  # noqa: E402
from deeplab_axial import predict  # noqa: E402
from deeplab_axial import vis  # noqa: E402
from trainer import train  # noqa: E402
from trainer import train_lib  # noqa: E402

CONFIG_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'synthetic',
                           'axial_deeplab_tiny.textproto')
PICTURE_NAME = 'prediction_vs_ground_truth.png'
PICTURE_ZOOM = 3  # the synthetic images are 96x128: enlarged so that the class names stay readable

flags.DEFINE_string('output_dir', 'demo_output', 'Everything the demo writes goes here.')
flags.DEFINE_bool('overwrite', False, 'Delete an existing --output_dir first.')
flags.DEFINE_integer('seed', 0, 'Seed of the dataset, the weights and the input pipeline.')


def _prepare_output_dir(output_dir: str, overwrite: bool) -> None:
    if os.path.exists(output_dir) and os.listdir(output_dir):
        if not overwrite:
            raise app.UsageError(f'--output_dir {output_dir!r} is not empty; pass --overwrite to start over')
        shutil.rmtree(output_dir)
    os.makedirs(output_dir, exist_ok=True)


def make_data(data_dir: str, seed: int) -> str:
    """Synthetic COCO-layout dataset plus its TFRecords (through the real COCO converter); returns the records dir."""
    synthetic.write_panoptic_dataset(data_dir, seed=seed)
    tfrecord_dir = os.path.join(data_dir, 'tfrecord')
    for split in ('train', 'val'):
        build_coco_data.convert_split(data_dir, tfrecord_dir, split, num_shards=4, dataset_name='synthetic_panoptic')
    return tfrecord_dir


def write_picture(data_dir: str, prediction_dir: str, path: str) -> None:
    """The first validation image, its predicted panoptic map and its ground truth, side by side."""
    descriptor = dataset.get('synthetic_panoptic')
    with open(os.path.join(data_dir, 'annotations', 'panoptic_val2017.json')) as f:
        gt = json.load(f)
    with open(os.path.join(prediction_dir, predict.PANOPTIC_JSON)) as f:
        pred = json.load(f)
    mapping = build_coco_data.coco_id_mapping(gt['categories'])
    gt_ann = gt['annotations'][0]
    pred_ann = next(a for a in pred['annotations'] if a['image_id'] == gt_ann['image_id'])
    image_file = next(im['file_name'] for im in gt['images'] if im['id'] == gt_ann['image_id'])
    image = np.asarray(Image.open(os.path.join(data_dir, 'val2017', image_file)).convert('RGB'))
    image = np.repeat(np.repeat(image, PICTURE_ZOOM, 0), PICTURE_ZOOM, 1)
    panoptic = {}
    for role, ann, folder in (('gt', gt_ann, os.path.join(data_dir, 'annotations', 'panoptic_val2017')),
                              ('pred', pred_ann, os.path.join(prediction_dir, 'panoptic'))):
        panoptic[role] = build_coco_data.panoptic_label_from_png(
            os.path.join(folder, ann['file_name']), ann['segments_info'], mapping, set(descriptor.thing_classes),
            descriptor.panoptic_label_divisor, descriptor.ignore_label
        ).repeat(PICTURE_ZOOM, 0).repeat(PICTURE_ZOOM, 1)
    picture = vis.prediction_vs_ground_truth(image, panoptic['pred'], panoptic['gt'], descriptor)
    atomic_files.write_png(path, picture)


def _summary_line(name: str, pq: float, ap: float, miou: float, miou_source: str) -> str:
    return f'{name:<44} PQ {pq:.3f}   AP {ap:.3f}   mIoU {miou:.3f} ({miou_source})'


def run_demo(output_dir: str, seed: int = 0) -> Dict[str, Dict[str, float]]:
    """Runs steps 1-5 (see the module docstring); returns the trainer's and the CLI's metrics."""
    times = {}
    start = time.time()
    data_dir = os.path.join(output_dir, 'data')
    tfrecord_dir = make_data(data_dir, seed)
    times['data'] = time.time() - start

    start = time.time()
    model_dir = os.path.join(output_dir, 'model')
    config, experiment_dir, strategy = train.prepare_experiment(
        CONFIG_FILE, 'train_and_eval', model_dir, config_params=[f'DATA_DIR={tfrecord_dir}'])
    results = train_lib.run_experiment(config, 'train_and_eval', experiment_dir, strategy, seed=seed)
    times['train_and_eval'] = time.time() - start

    start = time.time()
    export_dir = os.path.join(output_dir, 'export')
    saved_model_export.export(config, experiment_dir, export_dir)
    times['export'] = time.time() - start

    start = time.time()
    prediction_dir = os.path.join(output_dir, 'predictions')
    gt_json = os.path.join(data_dir, 'annotations', 'panoptic_val2017.json')
    status = predict.main(['--saved_model', export_dir, '--input', os.path.join(data_dir, 'val2017'),
                           '--output_dir', prediction_dir, '--gt_json', gt_json])
    if status != 0:
        raise RuntimeError(f'deeplab_axial.predict failed with exit status {status}')
    # The evaluation CLI runs as its own process, as a user would run it (its workers fork, which a process
    # holding TensorFlow's threads should not do).
    evaluation_json = os.path.join(output_dir, 'evaluation.json')
    subprocess.run([sys.executable, '-m', 'evaluation.evaluate', '--gt_json', gt_json,
                    '--gt_folder', os.path.join(data_dir, 'annotations', 'panoptic_val2017'),
                    '--pred_json', os.path.join(prediction_dir, predict.PANOPTIC_JSON),
                    '--pred_folder', os.path.join(prediction_dir, 'panoptic'), '--metrics', 'pq,ap,miou',
                    '--output_json', evaluation_json], check=True)
    with open(evaluation_json) as f:
        cli = json.load(f)
    write_picture(data_dir, prediction_dir, os.path.join(output_dir, PICTURE_NAME))
    times['predict_and_evaluate'] = time.time() - start

    trained = results['eval']
    print()
    # PQ and AP agree exactly (one inference path); mIoU differs by definition: the trainer scores the semantic
    # head as deeplab2 does, the file-based CLI the panoptic segments' classes (void where no segment).
    print(_summary_line('trainer (--mode=train_and_eval, in memory)', trained['evaluation/pq/PQ'],
                        trained['evaluation/ap/AP_Mask'], trained['evaluation/iou/IoU'], 'semantic head'))
    print(_summary_line('SavedModel + predict + evaluation.evaluate', cli['pq']['All']['pq'], cli['ap']['AP'],
                        cli['miou']['mIoU'], 'panoptic segments'))
    print('seconds: ' + ', '.join(f'{k} {v:.0f}' for k, v in times.items()) + f', total {sum(times.values()):.0f}')
    print(f'picture: {os.path.join(output_dir, PICTURE_NAME)}')
    return {'trainer': trained, 'cli': cli, 'seconds': times}


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    _prepare_output_dir(flags.FLAGS.output_dir, flags.FLAGS.overwrite)
    logging.set_verbosity(logging.WARNING)
    run_demo(flags.FLAGS.output_dir, flags.FLAGS.seed)


if __name__ == '__main__':
    app.run(main)
