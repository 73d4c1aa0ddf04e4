"""Panoptic ids packed into 8-bit RGB PNGs, id = R + 256 * G + 65536 * B: the encoding of COCO and Cityscapes
panoptic PNGs and of our TFRecord labels, with one encoder and one decoder for the converters, the records, the
COCO panoptic writer, evaluation and the demo. Free of TensorFlow, so that evaluation runs without it.

PNGs are decoded with libspng (the optional `pyspng` package) when it is installed, about 2.5x faster than Pillow
for these files; every other case (no pyspng, a PNG that is not 8-bit RGB) goes through Pillow, with the same result.
Most of either decoder's time is inflating the image data with the stock zlib, which is slow on the long distance-3
matches that flat id maps compress to (2.9 ms of pyspng's 3.1 ms for a 512x1024 PNG). With the optional `zlib-ng`
package, a plain 8-bit RGB file is inflated by zlib-ng instead (0.1 ms) and handed to the decoder as the same PNG with
its data in stored (uncompressed) deflate blocks, so the decoder only copies and unfilters: about 1 ms per PNG with
pyspng in an evaluation worker. Files that check does not accept go to the decoder untouched.
"""

import io
import os
import struct
import sys
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

try:
    import pyspng
except ImportError:
    pyspng = None
try:
    from zlib_ng import zlib_ng
except ImportError:
    zlib_ng = None

from deeplab_axial import atomic_files

# Ids below this fit three bytes.
MAX_PACKED_ID = 256 ** 3
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
_RGB8_REQUIRED = 'a panoptic PNG must be 8-bit RGB (id = R + 256 * G + 65536 * B)'


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """[H, W] non-negative ids below 2^24 -> [H, W, 3] uint8 colours (R, G, B = the id's bytes, lowest first)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= MAX_PACKED_ID):
        raise ValueError(f'Panoptic ids must lie in [0, 2^24) to be PNG-packed. Received range '
                         f'[{ids.min()}, {ids.max()}]')
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def encode_panoptic_png(ids: np.ndarray) -> bytes:
    """[H, W] ids below 2^24 -> the bytes of their RGB-packed PNG."""
    buf = io.BytesIO()
    Image.fromarray(id_to_rgb(ids), mode='RGB').save(buf, format='PNG', compress_level=6)
    return buf.getvalue()


def write_panoptic_png(path: str, ids: np.ndarray) -> None:
    """Writes [H, W] ids below 2^24 as an RGB-packed PNG file, whole or not at all (`atomic_files`)."""
    data = encode_panoptic_png(ids)
    atomic_files.write_atomically(path, lambda f: f.write(data))


def decode_panoptic_png(data: bytes) -> np.ndarray:
    """Inverse of `encode_panoptic_png`: PNG bytes -> [H, W] uint32 ids, every pixel decoded.

    Raises:
      ValueError: the bytes are not a complete 8-bit RGB PNG; the message says what is wrong, the caller names the
        file.
    """
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b'IHDR' and data[25:26] == b'\x02' and data[24] != 8:
        # Pillow would read a 16-bit RGB PNG as mode 'RGB' with only the high bytes: ids would silently change.
        raise ValueError(f'{_RGB8_REQUIRED}; this one has {data[24]} bits per channel')
    stored = None
    if _is_rgb8_png(data):
        if zlib_ng is not None:
            stored = _with_stored_image_data(data)
        if pyspng is not None and sys.byteorder == 'little':
            try:
                rgba = pyspng.load(stored or data, 'RGBA')
            except RuntimeError as e:
                raise ValueError(f'not a readable PNG: {e}') from None
            # R, G, B, A bytes read as a little-endian uint32, alpha masked: R + 256 * G + 65536 * B in one pass.
            ids = rgba.view(np.uint32)[..., 0]
            ids &= np.uint32(0xFFFFFF)
            return ids
    return _decode_with_pillow(stored or data)


def read_panoptic_png(path: str, image_name: str = '') -> np.ndarray:
    """Reads a panoptic PNG file as [height, width] uint32 ids.

    Raises:
      ValueError naming the image (`image_name`, else the path) and the file: it is missing or not a complete 8-bit
        RGB PNG.
    """
    label = image_name or path
    if not os.path.isfile(path):
        raise ValueError(f'Image {label}: PNG file {path} does not exist')
    with open(path, 'rb') as f:
        data = f.read()
    try:
        return decode_panoptic_png(data)
    except ValueError as e:
        raise ValueError(f'Image {label}: PNG {path}: {e}') from None


def _is_rgb8_png(data: bytes) -> bool:
    """Whether the IHDR chunk (always first) declares 8-bit truecolor without alpha, i.e. Pillow's mode 'RGB'."""
    return data[:8] == _PNG_SIGNATURE and data[12:16] == b'IHDR' and data[24:26] == b'\x08\x02'


_IEND_CHUNK = b'\x00\x00\x00\x00IEND\xaeB`\x82'


def _with_stored_image_data(data: bytes) -> Optional[bytes]:
    """The same 8-bit RGB PNG with its IDAT data inflated by zlib-ng and re-deflated as stored (uncompressed) blocks.

    Only the header, the image data and the end survive (ancillary chunks do not change RGB pixel values). The
    filtered scanlines are kept as they are, so the decoder still does the unfiltering and every check on them.

    Returns:
      The new PNG bytes, or None for a file this does not handle (interlaced, an unexpected critical chunk, a bad
      CRC, size or zlib stream, no IEND): the caller then decodes the original bytes and reports what its decoder finds.
    """
    if len(data) < 33 or data[8:12] != b'\x00\x00\x00\x0d':
        return None
    width, height, _, _, compression, filtering, interlace = struct.unpack('>IIBBBBB', data[16:29])
    if compression or filtering or interlace or not width or not height:
        return None
    idat, idat_ended, pos = [], False, 8
    while True:
        if pos + 12 > len(data):
            return None  # no IEND
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data) or zlib_ng.crc32(data[pos + 4:end - 4]) != struct.unpack('>I', data[end - 4:end])[0]:
            return None
        if kind == b'IEND':
            break
        if kind == b'IDAT':
            if idat_ended:
                return None  # IDAT chunks must be consecutive
            idat.append(data[pos + 8:end - 4])
        elif not kind.isalpha() or (kind[0] < ord('a') and not (kind == b'IHDR' and pos == 8
                                                                 or kind == b'PLTE' and not idat)):
            return None  # a malformed chunk type, or a critical chunk this check does not expect there
        else:
            idat_ended = bool(idat)
        pos = end
    raw_size = height * (1 + 3 * width)
    inflater = zlib_ng.decompressobj()
    try:
        raw = inflater.decompress(b''.join(idat), raw_size + 1)
    except zlib_ng.error:
        return None
    if len(raw) != raw_size or not inflater.eof or inflater.unused_data:
        return None
    # A zlib stream of stored deflate blocks (at most 65535 bytes each) written as views of `raw`, so that the only
    # copy is the final join: every fresh megabyte costs page faults.
    view, stream = memoryview(raw), [b'\x78\x01']
    for start in range(0, raw_size, 65535):
        block = view[start:start + 65535]
        stream += [struct.pack('<BHH', start + 65535 >= raw_size, len(block), len(block) ^ 0xFFFF), block]
    stream.append(struct.pack('>I', zlib_ng.adler32(raw)))
    crc = zlib_ng.crc32(b'IDAT')
    for piece in stream:
        crc = zlib_ng.crc32(piece, crc)
    length = sum(len(piece) for piece in stream)
    return b''.join([data[:33], struct.pack('>I', length), b'IDAT', *stream, struct.pack('>I', crc), _IEND_CHUNK])


def _decode_with_pillow(data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != 'PNG' or image.mode != 'RGB':
                raise ValueError(f'{_RGB8_REQUIRED}; this is a {image.format} of mode {image.mode!r}')
            image.load()
            # Pillow keeps RGB pixels as 4 bytes (R, G, B, pad): reading them as little-endian uint32 and masking
            # the pad byte gives R + 256 * G + 65536 * B without repacking to 3 bytes.
            packed = np.frombuffer(image.tobytes('raw', 'RGBX'), dtype='<u4').reshape(image.height, image.width)
    except UnidentifiedImageError:
        raise ValueError('not a readable PNG: cannot identify image file') from None
    except (OSError, SyntaxError) as e:  # Pillow's errors for a truncated or damaged file
        raise ValueError(f'not a readable PNG: {e}') from None
    return packed & np.uint32(0xFFFFFF)
