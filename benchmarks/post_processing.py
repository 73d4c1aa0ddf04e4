"""Times Panoptic-DeepLab post-processing on a Cityscapes-sized output: eager vs tf.function vs jit_compile.

A 1025 x 2049 output with 19 classes and 60 instances (ground-truth-like heatmap and offsets plus noise), Cityscapes
settings (NMS kernel 13, top-k 200, stuff area 2048). Prints the median of several runs per mode and the ratio to
eager. Run from the repository root (or with the package installed):
    PYTHONPATH=. python benchmarks/post_processing.py [--repeats N]
"""

import argparse
import time
from typing import Tuple

import numpy as np
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import targets
from deeplab_axial.model.post_processor.panoptic_deeplab import PostProcessor

HEIGHT, WIDTH, NUM_CLASSES, NUM_INSTANCES = 1025, 2049, 19, 60
DIVISOR, IGNORE, THINGS = 1000, 255, tuple(range(11, 19))


def synthetic_outputs(seed: int = 0) -> Tuple[dict, int]:
    """Raw outputs for a random label map: noisy one-hot logits, targets-built heatmap and offsets plus noise.

    Returns the outputs dict and the number of instances left visible (later rectangles may cover earlier ones).
    """
    rng = np.random.default_rng(seed)
    panoptic = np.repeat(np.arange(HEIGHT)[:, None] * 11 // HEIGHT, WIDTH, axis=1).astype(np.int32) * DIVISOR
    for i in range(NUM_INSTANCES):
        y, x = rng.integers(0, HEIGHT - 60), rng.integers(0, WIDTH - 60)
        panoptic[y:y + rng.integers(20, 250), x:x + rng.integers(20, 300)] = rng.choice(THINGS) * DIVISOR + i + 1
    t = targets.generate_panoptic_targets(panoptic, label_divisor=DIVISOR, ignore_label=IGNORE, thing_classes=THINGS)
    semantic = t[common.GT_SEMANTIC_KEY].numpy()
    logits = np.eye(NUM_CLASSES, dtype=np.float32)[semantic] * 4 + rng.normal(size=(HEIGHT, WIDTH, NUM_CLASSES))
    heatmap = t[common.GT_INSTANCE_CENTER_KEY].numpy() + rng.normal(scale=0.02, size=(HEIGHT, WIDTH))
    offsets = t[common.GT_INSTANCE_REGRESSION_KEY].numpy() + rng.normal(scale=1.0, size=(HEIGHT, WIDTH, 2))
    visible = len(np.unique(panoptic[panoptic % DIVISOR > 0]))
    return {
        common.PRED_SEMANTIC_LOGITS_KEY: tf.constant(logits[None], tf.float32),
        common.PRED_CENTER_HEATMAP_KEY: tf.constant(heatmap[None], tf.float32),
        common.PRED_OFFSET_MAP_KEY: tf.constant(offsets[None], tf.float32),
    }, visible


def median_seconds(fn, outputs, repeats: int) -> float:
    fn(outputs)[common.PRED_PANOPTIC_KEY].numpy()  # warm-up / trace / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(outputs)[common.PRED_PANOPTIC_KEY].numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    outputs, visible = synthetic_outputs()
    pp = PostProcessor(num_classes=NUM_CLASSES, label_divisor=DIVISOR, ignore_label=IGNORE, thing_classes=THINGS,
                       nms_kernel=13, keep_k_centers=200, stuff_area_limit=2048)
    modes = {
        'eager': pp,
        'tf.function': tf.function(pp),
        'tf.function(jit_compile=True)': tf.function(pp, jit_compile=True),
    }
    found = len(np.unique(pp(outputs)[common.PRED_INSTANCE_KEY].numpy())) - 1
    print(f'{HEIGHT}x{WIDTH}, {NUM_CLASSES} classes, {NUM_INSTANCES} instances drawn, {visible} visible, '
          f'{found} found, '
          f'{args.repeats} runs each, device: CPU')
    baseline = None
    for name, fn in modes.items():
        seconds = median_seconds(fn, outputs, args.repeats)
        baseline = baseline or seconds
        print(f'{name:32s} median {seconds * 1000:8.1f} ms   x{baseline / seconds:5.2f} vs eager')


if __name__ == '__main__':
    main()
