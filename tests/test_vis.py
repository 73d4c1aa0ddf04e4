"""Tests of deeplab_axial.vis against hand-computed pixels."""

import numpy as np
import pytest

from deeplab_axial import vis
from deeplab_axial.data import dataset

# synthetic_panoptic: 0 void, things 1 disc / 2 square / 3 triangle, stuff 4 sky / 5 grass / 6 wall; divisor 256.
DESCRIPTOR = dataset.get('synthetic_panoptic')
DIV = DESCRIPTOR.panoptic_label_divisor


def _scene():
    """A 20x30 map: grass left half, sky right half, two disc instances, a void corner."""
    panoptic = np.zeros((20, 30), np.int32)
    panoptic[:, :15] = 5 * DIV
    panoptic[:, 15:] = 4 * DIV
    panoptic[2:6, 2:6] = 1 * DIV + 1
    panoptic[10:14, 2:6] = 1 * DIV + 2
    panoptic[16:, 25:] = 0  # void
    image = np.full((20, 30, 3), 100, np.uint8)
    image[:, :, 1] = np.arange(30, dtype=np.uint8)[None, :] * 3
    return image, panoptic


def test_overlay_blends_class_colour_and_keeps_void():
    image, panoptic = _scene()
    out = vis.overlay_panoptic(image, panoptic, DESCRIPTOR, alpha=0.25, draw_boundaries=False, max_labels=0)
    assert out.shape == image.shape and out.dtype == np.uint8
    grass = np.array(DESCRIPTOR.colormap[5], np.float64)
    expected = np.round(0.75 * image[8, 10].astype(np.float64) + 0.25 * grass)
    np.testing.assert_array_equal(out[8, 10], expected)
    sky = np.array(DESCRIPTOR.colormap[4], np.float64)
    np.testing.assert_array_equal(out[3, 20], np.round(0.75 * image[3, 20] + 0.25 * sky))
    np.testing.assert_array_equal(out[16:, 25:], image[16:, 25:])  # void untouched


def test_alpha_one_gives_flat_colours_and_first_instance_keeps_class_colour():
    image, panoptic = _scene()
    out = vis.overlay_panoptic(image, panoptic, DESCRIPTOR, alpha=1.0, draw_boundaries=False, max_labels=0)
    np.testing.assert_array_equal(out[3, 3], DESCRIPTOR.colormap[1])
    np.testing.assert_array_equal(out[0, 29], DESCRIPTOR.colormap[4])


def test_instances_of_one_class_differ_and_shades_are_deterministic():
    image, panoptic = _scene()
    colors, valid = vis.colorize_panoptic(panoptic, DESCRIPTOR)
    assert not np.array_equal(colors[3, 3], colors[11, 3])
    assert np.all(colors[2:6, 2:6] == colors[3, 3])
    again, _ = vis.colorize_panoptic(panoptic.copy(), DESCRIPTOR)
    np.testing.assert_array_equal(colors, again)
    assert not valid[17, 26] and valid[0, 0]
    # The shade of an instance id does not depend on which other instances are present.
    alone = panoptic.copy()
    alone[2:6, 2:6] = 5 * DIV
    alone_colors, _ = vis.colorize_panoptic(alone, DESCRIPTOR)
    np.testing.assert_array_equal(alone_colors[11, 3], colors[11, 3])
    shades = np.stack([vis.instance_shade(i) for i in range(2, 200)])
    assert np.abs(shades).max() <= 48 and len({tuple(s) for s in shades.tolist()}) > 150


def test_segment_boundaries_mark_label_changes_only():
    panoptic = np.zeros((4, 5), np.int32)
    panoptic[:, 3:] = 7
    expected = np.zeros((4, 5), bool)
    expected[:, 2] = True  # its right neighbour differs
    np.testing.assert_array_equal(vis.segment_boundaries(panoptic), expected)


def test_boundaries_are_drawn_white():
    image, panoptic = _scene()
    out = vis.overlay_panoptic(image, panoptic, DESCRIPTOR, alpha=0.5, draw_boundaries=True, max_labels=0)
    np.testing.assert_array_equal(out[8, 14], (255, 255, 255))  # grass | sky edge
    np.testing.assert_array_equal(out[5, 3], (255, 255, 255))  # bottom row of the first disc
    assert not np.array_equal(out[8, 10], (255, 255, 255))


def test_class_names_are_written_on_the_largest_segments():
    panoptic = np.full((40, 120), 5 * DIV, np.int32)  # grass, left half: the largest segment
    panoptic[:, 60:] = 4 * DIV  # sky, right half, partly void
    panoptic[30:, 100:] = 0
    image = np.full((40, 120, 3), 90, np.uint8)
    plain = vis.overlay_panoptic(image, panoptic, DESCRIPTOR, draw_boundaries=False, max_labels=0)
    one = np.any(vis.overlay_panoptic(image, panoptic, DESCRIPTOR, draw_boundaries=False, max_labels=1) != plain, -1)
    two = np.any(vis.overlay_panoptic(image, panoptic, DESCRIPTOR, draw_boundaries=False, max_labels=2) != plain, -1)
    _, one_cols = np.nonzero(one)
    assert one_cols.size and one_cols.max() < 60  # only "grass", on the grass
    assert two[:, 60:].any() and not two[30:, 100:].any()  # "sky" added, not on the void corner


def test_side_by_side_is_wider_with_gap_and_titles():
    a = np.full((10, 40, 3), 50, np.uint8)
    b = np.full((8, 30, 3), 200, np.uint8)
    out = vis.side_by_side([a, b], gap=4)
    assert out.shape == (10, 74, 3)
    np.testing.assert_array_equal(out[:, :40], a)
    assert np.all(out[:, 40:44] == 0)
    np.testing.assert_array_equal(out[:8, 44:], b)
    assert np.all(out[8:, 44:] == 0)
    titled = vis.side_by_side([a, b], titles=('prediction', 'ground truth'))
    assert titled.shape == out.shape and np.any(titled != out)


def test_prediction_vs_ground_truth_shape():
    image, panoptic = _scene()
    out = vis.prediction_vs_ground_truth(image, panoptic, np.full_like(panoptic, 5 * DIV), DESCRIPTOR)
    assert out.shape == (20, 64, 3)


def test_bad_shapes_name_the_argument():
    image, panoptic = _scene()
    with pytest.raises(ValueError, match='same size'):
        vis.overlay_panoptic(image[:10], panoptic, DESCRIPTOR)
    with pytest.raises(ValueError, match='alpha'):
        vis.overlay_panoptic(image, panoptic, DESCRIPTOR, alpha=2.0)
    with pytest.raises(ValueError, match='titles'):
        vis.side_by_side([image], titles=('a', 'b'))
