"""The metric table (evaluation/metrics.py): a metric registered with one line flows through the evaluator, merging
across (pickled) workers, the summaries and the CLI; the built-in metrics follow the protocol (their values and tags:
test_eval_streaming.py)."""

import json
import pickle

import numpy as np
import pytest

from deeplab_axial.data import dataset
from evaluation import evaluate as cli
from evaluation import metrics
from evaluation.mean_iou import MeanIoU
from evaluation.panoptic_evaluator import PanopticEvaluator
from evaluation.synthetic_panoptic import random_panoptic_pair, write_panoptic_dataset

SYNTHETIC = dataset.get('synthetic_panoptic')  # contiguous: 1 disc, 2 square, 3 triangle (things), 4 sky, 5 grass
DIV = SYNTHETIC.panoptic_label_divisor


class SegmentCount:
    """A metric written for this test: how many ground-truth and predicted segments the images have."""

    def __init__(self, categories):
        del categories
        self.counts = np.zeros(2, np.int64)

    def add(self, overlap):
        self.counts += [len(overlap.gt_category), len(overlap.pred_category)]

    def merge(self, other):
        self.counts += other.counts

    def result(self):
        return {'gt': int(self.counts[0]), 'pred': int(self.counts[1])}

    @staticmethod
    def summaries(result):
        return {'evaluation/segments/GT': result['gt'], 'evaluation/segments/Pred': result['pred']}


@pytest.fixture
def segment_count(monkeypatch):
    """The one line that adds a metric, for the duration of a test."""
    monkeypatch.setitem(metrics.METRICS, 'segments', SegmentCount)


def _pairs(count=6):
    rng = np.random.default_rng(7)
    return [random_panoptic_pair(rng, SYNTHETIC, 40, 56, 12) for _ in range(count)]


def _segments(panoptic: np.ndarray) -> int:
    """Non-void segments of a panoptic map, counted directly."""
    values = np.unique(panoptic)
    return int(np.count_nonzero(values // DIV != SYNTHETIC.ignore_label))


def test_a_registered_metric_flows_through_the_evaluator_and_pickled_workers(segment_count):
    pairs = _pairs()
    expected = {'gt': sum(_segments(gt) for gt, _, _ in pairs), 'pred': sum(_segments(pred) for _, pred, _ in pairs)}
    assert expected['gt'] > 20 and expected['pred'] > 20
    single = PanopticEvaluator.from_descriptor(SYNTHETIC, ['pq', 'segments'])
    workers = [PanopticEvaluator.from_descriptor(SYNTHETIC, ['segments', 'pq']) for _ in range(2)]
    for k, (gt, pred, scores) in enumerate(pairs):
        single.update(gt, pred, scores)
        workers[k % 2].update(gt, pred, scores)
    merged = workers[0]
    merged.merge(pickle.loads(pickle.dumps(workers[1])))  # as a worker process would send it
    assert merged.metrics == ('pq', 'segments')  # table order
    for evaluator in (single, merged):
        result = evaluator.result()
        assert result['segments'] == expected
        summaries = metrics.summaries(result)
        assert summaries['evaluation/segments/GT'] == expected['gt']
        assert summaries['evaluation/segments/Pred'] == expected['pred']
        assert summaries['evaluation/pq/PQ'] == result['pq']['All']['pq']
    with pytest.raises(ValueError, match=r"subset of \['pq', 'ap', 'miou', 'segments'\]"):
        PanopticEvaluator.from_descriptor(SYNTHETIC, ['segment'])


def test_a_registered_metric_flows_through_the_cli(segment_count, tmp_path, capsys):
    pairs = _pairs(3)
    paths = write_panoptic_dataset(str(tmp_path / 'set'), SYNTHETIC, pairs)
    out = tmp_path / 'metrics.json'
    code = cli.main(['--gt_json', paths['gt_json'], '--gt_folder', paths['gt_folder'], '--pred_json',
                     paths['pred_json'], '--pred_folder', paths['pred_folder'], '--metrics', 'segments,pq',
                     '--num_workers', '2', '--output_json', str(out)])
    assert code == 0
    results = json.loads(out.read_text())
    assert set(results) == {'pq', 'segments'}
    assert results['segments'] == {'gt': sum(_segments(gt) for gt, _, _ in pairs),
                                   'pred': sum(_segments(pred) for _, pred, _ in pairs)}
    assert f'segments: GT {results["segments"]["gt"]:.4f}  Pred' in capsys.readouterr().out


def test_the_built_in_metrics_follow_the_protocol():
    evaluator = PanopticEvaluator.from_descriptor(SYNTHETIC)
    categories = evaluator.categories
    assert evaluator.metrics == ('pq', 'ap', 'miou')
    for name, cls in metrics.METRICS.items():
        accumulator = cls(categories)
        assert isinstance(accumulator, metrics.Metric), name
        assert isinstance(accumulator, metrics.SemanticMetric) == (cls is MeanIoU), name
        assert set(accumulator.result()) and set(cls.summaries(accumulator.result()))  # empty input: defined values
