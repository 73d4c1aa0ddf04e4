"""RGB packing of panoptic ids into PNGs, against the COCO rule written out by hand."""

import numpy as np
import pytest
from PIL import Image

from deeplab_axial.data.panoptic_png import decode_panoptic_png, encode_panoptic_png, id_to_rgb, read_panoptic_png
from deeplab_axial.data.panoptic_png import write_panoptic_png


def test_packing_follows_r_plus_256g_plus_65536b_and_round_trips(tmp_path):
    ids = np.array([[0, 1, 255], [256, 65536, 2 ** 24 - 1]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1, 0], [0, 1, 0])
    np.testing.assert_array_equal(rgb[1, 1], [0, 0, 1])
    np.testing.assert_array_equal(rgb[1, 2], [255, 255, 255])
    decoded = decode_panoptic_png(encode_panoptic_png(ids))
    assert decoded.dtype == np.uint32
    np.testing.assert_array_equal(decoded, ids)
    path = tmp_path / 'ids.png'
    write_panoptic_png(str(path), ids)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), rgb)  # an ordinary RGB PNG
    np.testing.assert_array_equal(read_panoptic_png(str(path)), ids)


@pytest.mark.parametrize('bad', [-1, 2 ** 24])
def test_ids_that_do_not_fit_three_bytes_are_refused(bad):
    with pytest.raises(ValueError, match=r'Panoptic ids must lie in \[0, 2\^24\)'):
        id_to_rgb(np.array([[0, bad]]))


def test_a_jpeg_is_no_panoptic_png(tmp_path):
    """A lossy file under a .png name would give wrong ids: evaluation refused it only by chance before."""
    path = tmp_path / 'labels.png'
    Image.new('RGB', (6, 4), (1, 2, 3)).save(path, format='JPEG')
    with pytest.raises(ValueError, match=r"Image x: PNG .*labels\.png: a panoptic PNG must be 8-bit RGB .*; this is "
                                         r"a JPEG of mode 'RGB'"):
        read_panoptic_png(str(path), 'x')
