"""Whole-or-nothing file writes (deeplab_axial/atomic_files.py)."""

import errno
import json
import os

import numpy as np
import pytest
from PIL import Image

from deeplab_axial import atomic_files
from deeplab_axial import io_errors


def test_write_atomically_leaves_nothing_when_the_writer_fails(tmp_path):
    target = tmp_path / 'out' / 'x.png'

    def failing(f):
        f.write(b'half')
        raise RuntimeError('broken encoder')

    def disk_full(f):
        f.write(b'half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what a write on a full disk raises: no path

    with pytest.raises(RuntimeError):
        atomic_files.write_atomically(str(target), failing)
    with pytest.raises(OSError) as raised:
        atomic_files.write_atomically(str(target), disk_full)
    assert io_errors.user_io_message(raised.value) == f'{target}: No space left on device'
    assert os.listdir(tmp_path / 'out') == []
    atomic_files.write_png(str(target), np.zeros((2, 3, 3), np.uint8))
    assert Image.open(target).size == (3, 2) and os.listdir(tmp_path / 'out') == ['x.png']


@pytest.mark.parametrize('umask', [0o022, 0o002])
def test_written_files_take_the_umask_mode(tmp_path, umask):
    """mkstemp made every output 0600, unreadable by teammates whatever their umask allowed."""
    previous = os.umask(umask)
    try:
        atomic_files.write_text(str(tmp_path / 'a.txt'), 'x')
        atomic_files.write_png(str(tmp_path / 'b.png'), np.zeros((2, 2), np.uint8))
        atomic_files.write_json(str(tmp_path / 'c.json'), {'pq': [0.5]})
    finally:
        os.umask(previous)
    for name in ('a.txt', 'b.png', 'c.json'):
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / 'a.txt').read_text() == 'x' and json.loads((tmp_path / 'c.json').read_text()) == {'pq': [0.5]}
    assert sorted(os.listdir(tmp_path)) == ['a.txt', 'b.png', 'c.json']  # no temporary file left beside them
