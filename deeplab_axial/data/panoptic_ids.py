"""Panoptic ids packed into 8-bit RGB, id = R + 256 * G + 65536 * B: the encoding of COCO and Cityscapes panoptic
PNGs and of our TFRecord labels. Free of TensorFlow, so that evaluation can use it without importing TF."""

import numpy as np

# Ids below this fit three bytes.
MAX_PACKED_ID = 256 ** 3


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] uint8 colours -> [H, W] int32 ids, id = R + 256 * G + 65536 * B."""
    rgb = rgb.astype(np.int32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """[H, W] non-negative ids below 2^24 -> [H, W, 3] uint8 colours (inverse of `rgb_to_id`)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= MAX_PACKED_ID):
        raise ValueError(f'Panoptic ids must lie in [0, 2^24) to be PNG-packed. Received range '
                         f'[{ids.min()}, {ids.max()}]')
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)
