"""Per-image host cost of predict's outputs on a Cityscapes-sized panoptic map (1024x2048, ~100 segments).

Times the colour overlay and the COCO panoptic conversion (deeplab_axial.data.coco_panoptic_format), each against a
peer in the same process: a plain numpy alpha blend of the same size (the least any overlay costs) and PNG encoding
of the segment-id image (what writing it costs anyway). Prints medians and ratios; the numbers depend on the machine.

    python benchmarks/bench_predict_outputs.py [--height 1024 --width 2048 --repeats 5]
"""

import argparse
import io
import os
import sys
import time

import numpy as np
from PIL import Image

# The repository first: this folder's evaluation.py would otherwise shadow the `evaluation` package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_axial import vis  # noqa: E402
from deeplab_axial.data import coco_panoptic_format, dataset, panoptic_png  # noqa: E402


def _median_seconds(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _scene(rng, height, width, descriptor):
    """Stuff stripes with rectangular thing instances on top."""
    semantic = (np.arange(width)[None, :] * 11 // width).repeat(height, 0)
    panoptic = semantic * descriptor.panoptic_label_divisor
    for instance in range(1, 90):
        cls = int(rng.choice(descriptor.thing_classes))
        y, x = rng.integers(0, height - 64), rng.integers(0, width - 64)
        h, w = rng.integers(8, 64, size=2)
        panoptic[y:y + h, x:x + w] = cls * descriptor.panoptic_label_divisor + instance
    return panoptic.astype(np.int32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--height', type=int, default=1024)
    parser.add_argument('--width', type=int, default=2048)
    parser.add_argument('--repeats', type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    descriptor = dataset.get('cityscapes_panoptic')
    panoptic = _scene(rng, args.height, args.width, descriptor)
    image = rng.integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8)
    colours = rng.integers(0, 256, size=image.shape, dtype=np.uint8)
    rgb = panoptic_png.id_to_rgb(coco_panoptic_format.panoptic_to_segments(panoptic, descriptor)[0])

    blend = _median_seconds(lambda: np.round(0.5 * image + 0.5 * colours).astype(np.uint8), args.repeats)
    png = _median_seconds(lambda: Image.fromarray(rgb).save(io.BytesIO(), format='PNG'), args.repeats)
    overlay = _median_seconds(lambda: vis.overlay_panoptic(image, panoptic, descriptor), args.repeats)
    coco = _median_seconds(lambda: coco_panoptic_format.panoptic_to_segments(panoptic, descriptor), args.repeats)
    print(f'{args.height}x{args.width}, {len(np.unique(panoptic))} segments, median of {args.repeats}')
    print(f'plain alpha blend (peer)    {blend * 1e3:8.1f} ms')
    print(f'overlay_panoptic            {overlay * 1e3:8.1f} ms  ({overlay / blend:.2f}x blend)')
    print(f'segment-id PNG encode (peer){png * 1e3:8.1f} ms')
    print(f'panoptic_to_segments        {coco * 1e3:8.1f} ms  ({coco / png:.2f}x PNG encode)')


if __name__ == '__main__':
    main()
