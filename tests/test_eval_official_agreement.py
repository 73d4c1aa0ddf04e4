"""Our PQ / AP / mIoU against panopticapi, cityscapesscripts and pycocotools on the same generated inputs.

The inputs carry void, crowd regions, merged and swapped instances, an empty prediction, a class absent from GT,
score ties, and (synthetic_panoptic, coco_panoptic) a category id space with gaps.
"""

import contextlib
import copy
import io
import os

import numpy as np
import pytest
from PIL import Image

from deeplab_axial.data import dataset
from deeplab_axial.data.panoptic_png import read_panoptic_png
from evaluation.evaluate import evaluate
from evaluation.panoptic_evaluator import PanopticEvaluator
from evaluation.synthetic_panoptic import random_panoptic_pair, write_panoptic_dataset


def _make_set(tmp_path, name, num_images=6, height=60, width=90, num_segments=18, seed=0):
    descriptor = dataset.get(name)
    rng = np.random.default_rng(seed)
    pairs = [random_panoptic_pair(rng, descriptor, height, width, num_segments, empty_prediction=(i == 2))
             for i in range(num_images)]
    paths = write_panoptic_dataset(str(tmp_path / 'coco'), descriptor, pairs)
    return descriptor, pairs, paths


def _ours(paths, metrics=('pq', 'ap', 'miou')):
    return evaluate(paths['gt_json'], paths['gt_folder'], paths['pred_json'], paths['pred_folder'], metrics,
                    num_workers=2)


def _in_memory(descriptor, pairs):
    evaluator = PanopticEvaluator.from_descriptor(descriptor)
    for gt, pred, scores in pairs:
        evaluator.update(gt, pred, scores)
    return evaluator.result()


def _assert_pq_equal(ours, official):
    for split in ('All', 'Things', 'Stuff'):
        assert ours[split]['n'] == official[split]['n'], split
        for key in ('pq', 'sq', 'rq'):
            assert abs(ours[split][key] - official[split][key]) < 1e-9, (split, key)
    for category, values in official['per_class'].items():
        for key in ('pq', 'sq', 'rq'):
            assert abs(ours['per_class'][str(category)][key] - values[key]) < 1e-9, (category, key)


@pytest.mark.parametrize('name', ['synthetic_panoptic', 'coco_panoptic', 'cityscapes_panoptic'])
def test_pq_matches_panopticapi(tmp_path, name):
    from panopticapi.evaluation import pq_compute
    descriptor, pairs, paths = _make_set(tmp_path, name)
    with contextlib.redirect_stdout(io.StringIO()):
        official = pq_compute(paths['gt_json'], paths['pred_json'], paths['gt_folder'], paths['pred_folder'])
    ours = _ours(paths, ['pq'])['pq']
    _assert_pq_equal(ours, official)
    assert ours['Things']['n'] > 0 and ours['Stuff']['n'] > 0
    # The in-memory path (what the trainer feeds) gives the same numbers as the files written from it.
    assert _in_memory(descriptor, pairs)['pq'] == ours


def test_pq_matches_cityscapesscripts(tmp_path):
    from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic
    _, _, paths = _make_set(tmp_path, 'cityscapes_panoptic', seed=1)
    with contextlib.redirect_stdout(io.StringIO()):
        official = evaluatePanoptic(paths['gt_json'], paths['gt_folder'], paths['pred_json'], paths['pred_folder'],
                                    str(tmp_path / 'result.json'))
    _assert_pq_equal(_ours(paths, ['pq'])['pq'], official)


def _coco_instances_reference(paths):
    """Independent COCO detection-format conversion (RLE masks) + plain pycocotools COCOeval('segm')."""
    import json
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt_json = json.load(open(paths['gt_json']))
    pred_json = json.load(open(paths['pred_json']))
    things = {c['id'] for c in gt_json['categories'] if c['isthing']}
    preds = {a['image_id']: a for a in pred_json['annotations']}
    images, gt_anns, dt_anns = [], [], []
    for ann in gt_json['annotations']:
        for role, source, out in (('gt', ann, gt_anns), ('dt', preds[ann['image_id']], dt_anns)):
            folder = paths['gt_folder'] if role == 'gt' else paths['pred_folder']
            rgb = np.array(Image.open(os.path.join(folder, source['file_name'])), dtype=np.uint32)
            ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
            if role == 'gt':
                images.append({'id': ann['image_id'], 'height': ids.shape[0], 'width': ids.shape[1]})
            for segment in source['segments_info']:
                if segment['category_id'] not in things:
                    continue
                rle = mask_utils.encode(np.asfortranarray((ids == segment['id']).astype(np.uint8)))
                rle['counts'] = rle['counts'].decode('ascii')
                entry = {'id': len(out) + 1, 'image_id': ann['image_id'], 'category_id': segment['category_id'],
                         'segmentation': rle}
                if role == 'gt':
                    entry.update(iscrowd=segment['iscrowd'], area=float(mask_utils.area(rle)),
                                 bbox=mask_utils.toBbox(rle).tolist())
                else:  # loadRes derives area and bbox from the mask
                    entry['score'] = segment.get('score', 1.0)
                out.append(entry)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {'images': images, 'annotations': gt_anns,
                           'categories': [{'id': c} for c in sorted(things)]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dt_anns)
        evaluator = COCOeval(coco_gt, coco_dt, 'segm')
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats


@pytest.mark.parametrize('name', ['synthetic_panoptic', 'cityscapes_panoptic'])
def test_coco_mask_ap_matches_pycocotools(tmp_path, name):
    descriptor, pairs, paths = _make_set(tmp_path, name, seed=2)
    ours = _ours(paths, ['ap'])['ap']
    official = _coco_instances_reference(paths)
    names = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl', 'AR1', 'AR10', 'AR100', 'ARs', 'ARm', 'ARl')
    np.testing.assert_allclose([ours[k] for k in names], official, atol=1e-6)
    assert ours['AP'] > 0
    assert _in_memory(descriptor, pairs)['ap'] == ours


def _cityscapes_label_ids(descriptor, panoptic, with_instances):
    """Train-id panoptic -> Cityscapes labelIds (void 0) or instanceIds (label*1000+k; crowd = label id)."""
    divisor = descriptor.panoptic_label_divisor
    semantic, instance = panoptic // divisor, panoptic % divisor
    lut = np.zeros(256, np.int32)
    lut[:descriptor.num_classes] = descriptor.dataset_ids
    label = lut[semantic]
    if with_instances:
        thing = np.isin(semantic, descriptor.thing_classes) & (instance > 0)
        label = np.where(thing, label * 1000 + instance, label)
    return label


def _cityscapes_instance_reference(tmp_path, descriptor, pairs):
    import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cs_instance
    gt_dir, pred_dir = tmp_path / 'cs_gt', tmp_path / 'cs_pred'
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt_files, pred_files = [], []
    for i, (gt, pred, scores) in enumerate(pairs):
        gt_file = gt_dir / f'city_{i:06d}_000019_gtFine_instanceIds.png'
        Image.fromarray(_cityscapes_label_ids(descriptor, gt, True).astype(np.uint16)).save(gt_file)
        gt_files.append(str(gt_file))
        lines = []
        for value in np.unique(pred):
            c, k = divmod(int(value), descriptor.panoptic_label_divisor)
            if c not in descriptor.thing_classes or k == 0:
                continue
            mask = pred == value
            mask_name = f'city_{i:06d}_000019_{value}.png'
            Image.fromarray(mask.astype(np.uint8) * 255).save(pred_dir / mask_name)
            lines.append(f'{mask_name} {descriptor.dataset_ids[c]} {float(scores[mask][0])}\n')
        txt = pred_dir / f'city_{i:06d}_000019_pred.txt'
        txt.write_text(''.join(lines))
        pred_files.append(str(txt))
    args = copy.copy(cs_instance.args)
    args.gtInstancesFile = str(tmp_path / 'gtInstances.json')
    args.exportFile = str(tmp_path / 'resultInstance.json')
    args.predictionPath = os.path.abspath(pred_dir)
    args.predictionWalk = None
    args.JSONOutput = False
    args.quiet = True
    args.instLabels = []
    with contextlib.redirect_stdout(io.StringIO()), pytest.MonkeyPatch.context() as patch:
        # Its cache / debug JSON dumps choke on numpy 2 scalars; the results come back in memory anyway.
        patch.setattr(cs_instance, 'writeDict2JSON', lambda data, path: None)
        result = cs_instance.evaluateImgLists(pred_files, gt_files, args)
    return result['averages']


def _cityscapes_pixel_reference(tmp_path, descriptor, pairs):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as cs_pixel
    gt_files, pred_files = [], []
    for i, (gt, pred, _) in enumerate(pairs):
        for role, panoptic, files in (('gt', gt, gt_files), ('pred', pred, pred_files)):
            path = tmp_path / f'{role}_{i}_labelIds.png'
            Image.fromarray(_cityscapes_label_ids(descriptor, panoptic, False).astype(np.uint8)).save(path)
            files.append(str(path))
    args = copy.copy(cs_pixel.args)
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    with contextlib.redirect_stdout(io.StringIO()):
        return cs_pixel.evaluateImgLists(pred_files, gt_files, args)


def test_cityscapes_ap_and_miou_match_cityscapesscripts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # cityscapesscripts writes matches.json into the working directory
    if not hasattr(np, 'in1d'):  # numpy >= 2.4 dropped in1d, which cityscapesscripts 2.3 still calls
        monkeypatch.setattr(np, 'in1d', lambda a, b: np.isin(a, b).ravel(), raising=False)
    monkeypatch.setenv('CITYSCAPES_DATASET', str(tmp_path))
    descriptor, pairs, paths = _make_set(tmp_path, 'cityscapes_panoptic', num_images=6, height=80, width=120,
                                         num_segments=24, seed=3)
    ours = _ours(paths)
    official_ap = _cityscapes_instance_reference(tmp_path, descriptor, pairs)
    assert abs(ours['ap']['cityscapes_AP'] - official_ap['allAp']) < 1e-6
    assert abs(ours['ap']['cityscapes_AP50'] - official_ap['allAp50%']) < 1e-6
    assert ours['ap']['cityscapes_AP50'] > 0

    official_miou = _cityscapes_pixel_reference(tmp_path, descriptor, pairs)
    assert abs(ours['miou']['mIoU'] - official_miou['averageScoreClasses']) < 1e-6
    for label_name, iou in official_miou['classScores'].items():
        label_id = official_miou['labels'][label_name]
        if label_id in descriptor.dataset_ids and not np.isnan(iou):
            assert abs(ours['miou']['per_class'][str(label_id)] - iou) < 1e-6, label_name
    in_memory = _in_memory(descriptor, pairs)
    assert in_memory['miou'] == ours['miou'] and in_memory['ap'] == ours['ap']


def test_writer_round_trip_keeps_ids_and_segments(tmp_path):
    descriptor, pairs, paths = _make_set(tmp_path, 'synthetic_panoptic', num_images=1)
    import json
    ann = json.load(open(paths['pred_json']))['annotations'][0]
    ids = read_panoptic_png(os.path.join(paths['pred_folder'], ann['file_name']))
    _, pred, scores = pairs[0]
    for segment in ann['segments_info']:
        mask = ids == segment['id']
        values = np.unique(pred[mask])
        assert values.size == 1 and values[0] + 1 == segment['id']
        assert segment['area'] == mask.sum()
        ys, xs = np.nonzero(mask)
        assert segment['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        c = values[0] // descriptor.panoptic_label_divisor
        assert segment['category_id'] == descriptor.to_dataset_id(c)
        if c in descriptor.thing_classes:
            assert segment['score'] == pytest.approx(float(scores[mask][0]), abs=1e-6)
    void = pred // descriptor.panoptic_label_divisor == descriptor.ignore_label
    np.testing.assert_array_equal(ids == 0, void)
