"""Tests of inference file handling: input discovery and decoding to RGB."""

import numpy as np
import pytest
from PIL import Image

from deeplab_axial.inference import files


def test_list_inputs_file_folder_and_globs(tmp_path):
    (tmp_path / 'sub').mkdir()
    for name in ('b.png', 'a.jpg', '.hidden.png', 'sub/c.png'):
        (tmp_path / name).write_bytes(b'x')
    # Folders inside a folder or matched by a pattern are listed, for the caller to report (they were dropped).
    assert files.list_inputs(str(tmp_path)) == [str(tmp_path / 'a.jpg'), str(tmp_path / 'b.png'), str(tmp_path / 'sub')]
    assert files.list_inputs(str(tmp_path / '*')) == [str(tmp_path / 'a.jpg'), str(tmp_path / 'b.png'),
                                                      str(tmp_path / 'sub')]
    assert files.list_inputs(str(tmp_path / 'b.png')) == [str(tmp_path / 'b.png')]
    assert files.list_inputs(str(tmp_path / '*.png')) == [str(tmp_path / 'b.png')]
    assert files.list_inputs(str(tmp_path / '**' / '*.png')) == [str(tmp_path / 'b.png'), str(tmp_path / 'sub/c.png')]
    assert files.list_inputs(str(tmp_path / '**')) == [str(tmp_path / 'a.jpg'), str(tmp_path / 'b.png'),
                                                       str(tmp_path / 'sub/c.png')]
    with pytest.raises(FileNotFoundError, match='--input'):
        files.list_inputs(str(tmp_path / '*.bmp'))
    with pytest.raises(FileNotFoundError, match=r"names no file; it names only folders \(.*sub\), which are not "):
        files.list_inputs(str(tmp_path / 's*'))


def test_read_image_gives_rgb_for_grey_and_rgba_and_rejects_other_formats(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / 'grey.png')
    rgba = np.zeros((3, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    Image.fromarray(rgba).save(tmp_path / 'rgba.png')
    Image.fromarray(grey).save(tmp_path / 'grey.bmp')
    out = files.read_image(str(tmp_path / 'grey.png'))
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, -1))
    np.testing.assert_array_equal(files.read_image(str(tmp_path / 'rgba.png'))[0, 0], (200, 0, 0))
    assert files.image_size(str(tmp_path / 'rgba.png')) == (3, 4)
    with pytest.raises(ValueError, match='JPEG or PNG'):
        files.read_image(str(tmp_path / 'grey.bmp'))


def test_jpeg_pixels_are_those_of_the_input_pipeline_decoder(tmp_path):
    """Pillow and TensorFlow decode JPEGs differently; inference must see what evaluation saw."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    path = tmp_path / 'noisy.jpg'
    Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(path, quality=90)
    expected = tf.io.decode_image(path.read_bytes(), channels=3).numpy()
    pillow = np.asarray(Image.open(path).convert('RGB'))
    assert np.any(pillow != expected)  # otherwise this test could not tell the decoders apart
    np.testing.assert_array_equal(files.read_image(str(path)), expected)
