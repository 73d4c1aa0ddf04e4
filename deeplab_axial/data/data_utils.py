"""TFExample layout shared by the converters and the reader.

Keys follow deeplab2 (`common.KEY_*`). Panoptic labels are NOT stored as raw int32 bytes (deeplab2's 'raw' format
made a 7 GB dataset 200 GB, deeplab2 issue #84): the panoptic id map is packed into an 8-bit RGB PNG as
id = R + 256 * G + 65536 * B (the packing COCO and Cityscapes panoptic PNGs use), format string
`PANOPTIC_PNG_FORMAT` (`panoptic_png.encode_panoptic_png`). This holds any id below 2^24 (Cityscapes' void
255 * 1000 included), compresses like the source PNGs, and decodes back bit-exactly. Records written by deeplab2
(format 'raw') are still readable.
"""

import io
from typing import Dict, Optional, Tuple

import numpy as np
from PIL import Image
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial import io_errors
from deeplab_axial.data.panoptic_png import encode_panoptic_png

# Label format values of `common.KEY_LABEL_FORMAT`.
PANOPTIC_PNG_FORMAT = 'panoptic_rgb_png'
RAW_INT32_FORMAT = 'raw'


def check_image_decodes(data: bytes, height: int, width: int, name: str) -> None:
    """Decodes `data` fully with the input pipeline's decoder and checks its size.

    Raises:
      ValueError naming `name`: the bytes do not decode (a truncated or corrupt file) or decode to another size.
    """
    try:
        shape = tf.io.decode_image(data, channels=3, expand_animations=False).shape
    except tf.errors.InvalidArgumentError as e:
        raise ValueError(f'Cannot decode image {name}: {io_errors.op_error_text(e)}') from None
    if tuple(shape[:2]) != (height, width):
        raise ValueError(f'Image {name} decodes to {shape[0]}x{shape[1]} (height x width); its header says '
                         f'{height}x{width}')


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _image_features(image_data: bytes, image_format: str, filename: str, height: int, width: int
                    ) -> Dict[str, tf.train.Feature]:
    """The image keys every example carries (deeplab2's names)."""
    return {
        common.KEY_ENCODED_IMAGE: _bytes(image_data),
        common.KEY_IMAGE_FILENAME: _bytes(filename.encode()),
        common.KEY_IMAGE_FORMAT: _bytes(image_format.encode()),
        common.KEY_IMAGE_HEIGHT: _int64(height),
        common.KEY_IMAGE_WIDTH: _int64(width),
        common.KEY_IMAGE_CHANNELS: _int64(3),
    }


def create_panoptic_example(image_data: bytes, image_format: str, filename: str, height: int, width: int,
                            panoptic: Optional[np.ndarray]) -> tf.train.Example:
    """A panoptic tf.train.Example; `panoptic` [height, width] int32 or None (test split without labels)."""
    feature = _image_features(image_data, image_format, filename, height, width)
    if panoptic is not None:
        if panoptic.shape != (height, width):
            raise ValueError(f'{filename}: label shape {panoptic.shape} differs from image size {(height, width)}')
        feature[common.KEY_ENCODED_LABEL] = _bytes(encode_panoptic_png(panoptic))
        feature[common.KEY_LABEL_FORMAT] = _bytes(PANOPTIC_PNG_FORMAT.encode())
    return tf.train.Example(features=tf.train.Features(feature=feature))


def create_classification_example(image_data: bytes, image_format: str, filename: str, height: int, width: int,
                                  label: int) -> tf.train.Example:
    """A TPU-style ImageNet tf.train.Example (`image/class/label` is 1-based in that format)."""
    feature = _image_features(image_data, image_format, filename, height, width)
    feature[common.KEY_CLASS_LABEL] = _int64(label)
    return tf.train.Example(features=tf.train.Features(feature=feature))


def read_image_for_record(path: str) -> Tuple[bytes, str, int, int]:
    """Reads an image file for a record: (bytes, format, height, width).

    JPEG/PNG bytes in RGB or grayscale are stored unchanged (so a converted dataset stays the size of its
    source); other modes (CMYK, palette, alpha) are re-encoded as lossless RGB PNG.

    Raises:
      FileNotFoundError: naming `path` when it does not exist.
      ValueError: naming `path` when it is not a readable image: every pixel is decoded, by the input pipeline's
        decoder, so that a file the pipeline would fail on is caught here.
    """
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f'Missing image file: {path}')
    with tf.io.gfile.GFile(path, 'rb') as f:
        data = f.read()
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, mode, (width, height) = (im.format or '').lower(), im.mode, im.size
            if not (fmt in ('jpeg', 'png') and mode in ('RGB', 'L')):
                buf = io.BytesIO()
                im.convert('RGB').save(buf, format='PNG')
                data, fmt = buf.getvalue(), 'png'
    except Exception as e:  # PIL raises several types for corrupt files.
        raise ValueError(f'Cannot read image {path}: {e}') from e
    check_image_decodes(data, height, width, path)  # the header alone passed truncated files
    return data, fmt, height, width
