"""Runs a trained model on image files and writes panoptic PNGs + COCO JSON, colour overlays, or top-5 classes.

Usage:
  python -m deeplab_axial.predict --saved_model EXPORT_DIR --input 'images/*.jpg' --output_dir OUT
  python -m deeplab_axial.predict --config_file C --checkpoint K --input images/ --output_dir OUT \
      --scales 0.75,1,1.25 --flip

Outputs in --output_dir:
  panoptic models: panoptic/<name>.png (COCO panoptic segment-id PNG), panoptic.json (one COCO panoptic JSON for
    the run, official category ids; written last, so its presence marks a finished run), overlay/<name>.png.
  classification models: top5.csv (file, then class id, name and probability for each of the top 5).
Image ids in the JSON: an all-digit file name is an integer id (COCO's naming); with --gt_json, each image takes
the id of the ground-truth image with the same file name stem, so `python -m evaluation.evaluate` scores the run
against that ground truth directly.

The SavedModel path imports neither the trainer nor the model code; it averages over the scales and flips its
config had at export (evaluator_options.eval_scales, add_flipped_images). The --config_file/--checkpoint path takes
the same from the config, and --scales / --flip (--no-flip) override them. Files that cannot be read as JPEG/PNG,
and folders that --input names (they are not searched), are named and skipped; the run then ends with exit status 1
after writing everything else. A full disk or a missing permission stops it with one error line naming the path.
"""

import argparse
import collections
import csv
import io
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from deeplab_axial import atomic_files, common, io_errors, vis
from deeplab_axial.data import coco_panoptic_format
from deeplab_axial.data.dataset import DatasetDescriptor
from deeplab_axial.inference import files

PANOPTIC_DIR = 'panoptic'
OVERLAY_DIR = 'overlay'
PANOPTIC_JSON = 'panoptic.json'
TOP5_CSV = 'top5.csv'


class PredictError(Exception):
    """A problem with the command line or the inputs, reported without a traceback."""


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog='python -m deeplab_axial.predict', description=__doc__.split('\n')[0])
    parser.add_argument('--saved_model', help='SavedModel directory written by the deeplab_axial export')
    parser.add_argument('--config_file', help='experiment config (textproto); with --checkpoint')
    parser.add_argument('--checkpoint', help='checkpoint prefix or directory; with --config_file')
    parser.add_argument('--input', required=True, help='an image file, a folder or a glob (quote it)')
    parser.add_argument('--output_dir', required=True, help='where to write the results')
    parser.add_argument('--scales', help='comma-separated input scales (checkpoint path only; default: the '
                                         "config's evaluator_options.eval_scales)")
    parser.add_argument('--flip', action=argparse.BooleanOptionalAction,
                        help="add mirrored inputs, or not (checkpoint path only; default: the config's "
                             'evaluator_options.add_flipped_images)')
    parser.add_argument('--batch_size', type=int, default=8, help='images per call for same-size images')
    parser.add_argument('--overwrite', action='store_true', help='write into a non-empty --output_dir')
    parser.add_argument('--gt_json', help='COCO panoptic ground-truth JSON whose image ids the outputs take '
                                          '(matched on file name without extension)')
    return parser.parse_args(argv)


def _parse_scales(text: str) -> Tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(','))
    except ValueError:
        raise PredictError(f'--scales must be comma-separated numbers such as 0.75,1,1.25. '
                           f'Received: {text!r}') from None
    if not all(s > 0 for s in scales):
        raise PredictError(f'--scales must be positive. Received: {text!r}')
    return scales


def _build_runner(args: argparse.Namespace):
    """The SavedModel runner or the checkpoint runner, after checking the flags that choose between them."""
    scales = None if args.scales is None else _parse_scales(args.scales)
    if args.batch_size < 1:
        raise PredictError(f'--batch_size must be at least 1. Received: {args.batch_size}')
    if args.saved_model:
        if args.config_file or args.checkpoint:
            raise PredictError('Pass either --saved_model or --config_file with --checkpoint, not both')
        if scales is not None or args.flip is not None:
            raise PredictError('--scales and --flip need --config_file/--checkpoint: a SavedModel averages over '
                               'the scales and flips its config had when it was exported')
        if not os.path.isdir(args.saved_model):
            raise PredictError(f'--saved_model {args.saved_model!r} is not a directory')
        from deeplab_axial.inference import saved_model_runner  # Imports TensorFlow: only once the flags are valid.
        try:
            return saved_model_runner.SavedModelRunner(args.saved_model)
        except (FileNotFoundError, ValueError) as e:
            raise PredictError(str(e)) from None
    if not (args.config_file and args.checkpoint):
        raise PredictError('Pass --saved_model, or --config_file together with --checkpoint')
    from deeplab_axial.inference import checkpoint_runner
    try:
        return checkpoint_runner.build_runner(args.config_file, args.checkpoint, scales, args.flip)
    except (FileNotFoundError, ValueError) as e:  # ValueError: a bad config field or checkpoint, named.
        raise PredictError(str(e)) from None


def _check_output_dir(output_dir: str, overwrite: bool) -> None:
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise PredictError(f'--output_dir {output_dir!r} is not empty; pass --overwrite to write into it')
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise PredictError(f'--output_dir {output_dir!r} exists and is not a directory')


def _output_names(paths: Sequence[str]) -> Dict[str, str]:
    """Input path -> output base name (file name without extension); two inputs may not share one."""
    names = {}
    owner = {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in owner:
            raise PredictError(f'{owner[name]} and {path} would write the same output name {name!r}; '
                               'predict them in separate runs')
        owner[name] = path
        names[path] = name
    return names


def _image_ids(names: Sequence[str], gt_json: Optional[str]) -> Dict[str, object]:
    """Output name -> image id of the COCO JSON.

    With --gt_json, a name takes the id of the ground-truth image with the same file name stem (so COCO's integer
    ids and Cityscapes' string ids both match). Otherwise, or for names the ground truth lacks, an all-digit name
    is an integer id (COCO names its files by zero-padded id) and any other name is its own id.
    """
    gt_ids = {}
    if gt_json:
        try:
            with open(gt_json) as f:
                gt_images = json.load(f)['images']
            gt_ids = {os.path.splitext(os.path.basename(im['file_name']))[0]: im['id'] for im in gt_images}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PredictError(f'--gt_json {gt_json!r}: expected a COCO panoptic JSON with an "images" list of '
                               f'{{"id", "file_name"}}: {type(e).__name__}: {e}') from None
    return {name: gt_ids.get(name, int(name) if name.isdigit() else name) for name in names}


class _Progress:
    """One self-overwriting line on stderr: done/total and images per second."""

    def __init__(self, total: int):
        self._total = total
        self._done = 0
        self._start = time.perf_counter()

    def update(self, n: int) -> None:
        self._done += n
        rate = self._done / max(time.perf_counter() - self._start, 1e-9)
        filled = int(30 * self._done / max(self._total, 1))
        sys.stderr.write(f'\r[{"#" * filled}{"." * (30 - filled)}] {self._done}/{self._total} '
                         f'{rate:.2f} images/s')
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write('\n')


def _size_groups(paths: Sequence[str], batch_size: int, failures: Dict[str, str]) -> List[List[str]]:
    """Chunks of at most batch_size same-size images, in input order of each size's first image."""
    by_size = collections.OrderedDict()
    for path in paths:
        try:
            size = files.image_size(path)
        except Exception as e:  # noqa: BLE001 - any decoder error means "not a readable image".
            failures[path] = f'{type(e).__name__}: {e}'
            continue
        by_size.setdefault(size, []).append(path)
    return [group[i:i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def _write_panoptic(output_dir: str, name: str, image_id, image: np.ndarray, outputs: Dict[str, np.ndarray],
                    index: int, descriptor: DatasetDescriptor) -> dict:
    """Writes one image's COCO panoptic PNG and overlay; returns its annotation for the run's JSON."""
    panoptic = outputs[common.PRED_PANOPTIC_KEY][index]
    scores = outputs.get(common.PRED_INSTANCE_SCORES_KEY)
    annotation = coco_panoptic_format.write_coco_panoptic(
        panoptic, descriptor, os.path.join(output_dir, PANOPTIC_DIR, name + '.png'), image_id=image_id,
        instance_scores=None if scores is None else scores[index])
    atomic_files.write_png(os.path.join(output_dir, OVERLAY_DIR, name + '.png'),
                           vis.overlay_panoptic(image, panoptic, descriptor))
    return annotation


def _top5_row(path: str, classes: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> list:
    row = [os.path.basename(path)]
    for c, p in zip(classes.tolist(), probs.tolist()):
        row += [c, class_names[c] if 0 <= c < len(class_names) else '', f'{p:.6f}']
    return row


def run(args: argparse.Namespace) -> int:
    """Predicts on every input; returns 0, or 1 when some inputs could not be read."""
    _check_output_dir(args.output_dir, args.overwrite)
    try:
        paths = files.list_inputs(args.input)
    except FileNotFoundError as e:
        raise PredictError(str(e)) from None
    failures = {path: 'a folder: --input does not search folders inside it; pass the folder itself or a glob such '
                      'as "dir/**/*.jpg"' for path in paths if os.path.isdir(path)}
    files_in = [path for path in paths if path not in failures]
    names = _output_names(files_in)
    image_ids = _image_ids(list(names.values()), args.gt_json)
    order = {path: i for i, path in enumerate(files_in)}
    runner = _build_runner(args)
    descriptor = runner.descriptor
    images_info, annotations, top5_rows = [], [], []
    chunks = _size_groups(files_in, args.batch_size, failures)
    progress = _Progress(sum(len(chunk) for chunk in chunks))
    for chunk in chunks:
        images, readable = [], []
        for path in chunk:
            try:
                images.append(files.read_image(path))
                readable.append(path)
            except Exception as e:  # noqa: BLE001 - a truncated or corrupt file fails here, after its header.
                failures[path] = f'{type(e).__name__}: {e}'
        if readable:
            outputs = runner(images)
            for i, (path, image) in enumerate(zip(readable, images)):
                if runner.task == common.TASK_PANOPTIC:
                    image_id = image_ids[names[path]]
                    annotations.append((order[path], _write_panoptic(
                        args.output_dir, names[path], image_id, image, outputs, i, descriptor)))
                    images_info.append((order[path], {'id': image_id, 'file_name': os.path.basename(path),
                                                      'height': image.shape[0], 'width': image.shape[1]}))
                else:
                    top5_rows.append((order[path], _top5_row(
                        path, outputs[common.PRED_TOP5_CLASSES_KEY][i], outputs[common.PRED_TOP5_PROBS_KEY][i],
                        descriptor.class_names)))
        progress.update(len(chunk))
    progress.close()
    if runner.task == common.TASK_PANOPTIC:
        coco_panoptic_format.write_panoptic_json(os.path.join(args.output_dir, PANOPTIC_JSON),
                                                 [a for _, a in sorted(annotations, key=lambda x: x[0])],
                                                 coco_panoptic_format.categories_from_descriptor(descriptor),
                                                 [im for _, im in sorted(images_info, key=lambda x: x[0])])
    else:
        text = io.StringIO()
        writer = csv.writer(text, lineterminator='\n')
        writer.writerow(['file'] + [f'{k}_{r}' for r in range(1, 6) for k in ('class', 'name', 'prob')])
        writer.writerows(row for _, row in sorted(top5_rows, key=lambda x: x[0]))
        atomic_files.write_text(os.path.join(args.output_dir, TOP5_CSV), text.getvalue())
    written = len(paths) - len(failures)
    print(f'Wrote predictions for {written} of {len(paths)} inputs to {args.output_dir}')
    if failures:
        print(f'Skipped {len(failures)} folders, unreadable or non-image files:', file=sys.stderr)
        for path in sorted(failures):
            print(f'  {path}: {failures[path]}', file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse_args(argv)
    try:
        return run(args)
    except PredictError as e:
        message = str(e)
    except Exception as e:  # noqa: BLE001 - a full disk or a missing permission is one line; anything else raises.
        message = io_errors.user_io_message(e)
        if message is None:
            raise
    print(f'error: {message}', file=sys.stderr)
    return 2


if __name__ == '__main__':
    sys.exit(main())
