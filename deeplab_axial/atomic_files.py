"""Files written whole or not at all: a temporary name beside the target, then a rename.

Used for every local output a reader could take as complete: converted JSONs, prediction PNGs and JSONs, overlays,
evaluation results, the demo's picture. A reader never sees a partial file under the final name; on failure the
temporary file is removed. Files get the mode the user's umask gives a new file (as `open` would; `mkstemp` would
make them 0600), so teammates read them where the umask lets them. Imports no TensorFlow (evaluation runs without).
"""

import json
import os
import secrets
from typing import Any, BinaryIO, Callable, Tuple

import numpy as np
from PIL import Image

from deeplab_axial import io_errors


def write_atomically(path: str, write_fn: Callable[[BinaryIO], Any]) -> None:
    """Calls `write_fn(f)` on a binary temporary file beside `path`, then renames it to `path`.

    Raises:
      OSError naming `path` (a full disk, a missing permission), or whatever `write_fn` raises.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = _create_hidden_temp(directory, os.path.basename(path))
        with os.fdopen(fd, 'wb') as f:
            write_fn(f)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise io_errors.with_path(e, path) from e
        raise


def _create_hidden_temp(directory: str, name: str) -> Tuple[int, str]:
    """Opens a new file `.{name}.{random}.tmp` in `directory` for writing, mode 0o666 less the umask (mkstemp would
    make it 0o600, and the mode survives the rename)."""
    while True:
        tmp = os.path.join(directory, f'.{name}.{secrets.token_hex(4)}.tmp')
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_BINARY', 0), 0o666), tmp
        except FileExistsError:
            continue


def write_json(path: str, data: Any) -> None:
    """Writes `data` as JSON."""
    write_atomically(path, lambda f: f.write(json.dumps(data).encode('utf-8')))


def write_text(path: str, text: str) -> None:
    """Writes a UTF-8 text file."""
    write_atomically(path, lambda f: f.write(text.encode('utf-8')))


def write_png(path: str, array: np.ndarray) -> None:
    """Writes a uint8 [height, width] or [height, width, 3] array as PNG."""
    write_atomically(path, lambda f: Image.fromarray(array).save(f, format='PNG'))
