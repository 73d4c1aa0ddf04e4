"""RGB packing of panoptic ids, against the COCO rule written out by hand."""

import numpy as np
import pytest

from deeplab_axial.data.panoptic_ids import id_to_rgb, rgb_to_id


def test_packing_follows_r_plus_256g_plus_65536b_and_round_trips():
    ids = np.array([[0, 1, 255], [256, 65536, 2 ** 24 - 1]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 0], [0, 1, 0])
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 1])
    np.testing.assert_array_equal(rgb[1, 2], [255, 255, 255])
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


@pytest.mark.parametrize('bad', [-1, 2 ** 24])
def test_ids_that_do_not_fit_three_bytes_are_refused(bad):
    with pytest.raises(ValueError, match=r'Panoptic ids must lie in \[0, 2\^24\)'):
        id_to_rgb(np.array([[0, bad]]))
