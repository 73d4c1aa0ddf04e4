"""Temporary files and folders that a killed writer leaves behind, and that a later run may safely remove.

A temporary name is `{prefix}{host}-{pid}` (`temp_name`): the prefix starts with a dot and names what is written,
so that no data pattern (`train*`, `export*`) matches it, and the end names the writing process. A later run removes
the ones it owns (`remove_stale`): written on this host by a process that no longer runs. Names from another host
are left to a run there; a pid reused by a new process keeps its name until that process ends. Paths go through
tf.io.gfile, so gs:// works.
"""

import os
import socket
from typing import List

from absl import logging
import tensorflow as tf

_HOST = socket.gethostname()


def temp_name(prefix: str) -> str:
    """`{prefix}{host}-{pid}` for this process; `prefix` is a path whose base name starts with a dot."""
    return f'{prefix}{_HOST}-{os.getpid()}'


def process_runs(pid: int) -> bool:
    """Whether a process `pid` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def remove_stale(prefix_pattern: str) -> List[str]:
    """Removes the temporary files and folders `{prefix}{host}-{pid}` of this host whose process no longer runs.

    Args:
      prefix_pattern: the prefix `temp_name` was given, or a glob pattern matching the prefixes (no pattern
        character after its last one).

    Returns:
      The removed paths.
    """
    removed = []
    for path in tf.io.gfile.glob(f'{prefix_pattern}{_HOST}-*'):
        pid = path.rstrip('/').rsplit('-', 1)[1]
        if not pid.isdigit() or int(pid) == os.getpid() or process_runs(int(pid)):
            continue
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        else:
            tf.io.gfile.remove(path)
        removed.append(path)
    if removed:
        logging.info('Removed %d temporary files of runs that were stopped: %s', len(removed), removed)
    return removed
