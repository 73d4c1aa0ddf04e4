"""Input discovery and image decoding for inference."""

import glob
import os
from typing import List

import numpy as np
import tensorflow as tf
from PIL import Image


def list_inputs(path_or_glob: str) -> List[str]:
    """The entries named by a file path, a folder (its entries, not recursive) or a glob ("**" recurses), sorted.

    Every non-hidden entry of a folder is returned, whatever its extension, and so is every folder a pattern matches
    (except with "**", whose matches include the folders it recurses through): the caller reports what it cannot read
    instead of skipping it silently.

    Raises:
      FileNotFoundError naming `path_or_glob` when it matches no file.
    """
    if os.path.isdir(path_or_glob):
        names = [os.path.join(path_or_glob, n) for n in os.listdir(path_or_glob) if not n.startswith('.')]
    elif os.path.isfile(path_or_glob):
        names = [path_or_glob]
    else:
        names = glob.glob(path_or_glob, recursive=True)  # "**" matches nested folders.
        if '**' in path_or_glob:
            names = [n for n in names if not os.path.isdir(n)]
    if not any(os.path.isfile(n) for n in names):
        folders = sorted(n for n in names if os.path.isdir(n))
        found = (f'; it names only folders ({", ".join(folders[:3])}{", ..." if len(folders) > 3 else ""}), which '
                 'are not searched') if folders else ''
        raise FileNotFoundError(f'--input {path_or_glob!r} names no file{found} (expected a file, a folder of files '
                                'or a glob such as "images/*.jpg" or "images/**/*.png")')
    return sorted(names)


def image_size(path: str) -> tuple:
    """(height, width) read from the file header, without decoding the pixels."""
    with Image.open(path) as im:
        if im.format not in ('JPEG', 'PNG'):
            raise ValueError(f'{im.format} files are not supported; expected JPEG or PNG')
        return im.height, im.width


def read_image(path: str) -> np.ndarray:
    """Decodes a JPEG or PNG file to uint8 RGB [height, width, 3] (grey and RGBA are converted; EXIF rotation is
    ignored so predictions align with annotations made on the stored pixels).

    Pixels come from TensorFlow's decoder, the one the input pipeline uses: Pillow's JPEG decoding differs from it
    by up to 14 levels on most pixels, enough to change predictions between evaluation and inference.
    """
    image_size(path)  # Rejects other formats by name before decoding.
    with open(path, 'rb') as f:
        data = f.read()
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()

