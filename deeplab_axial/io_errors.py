"""One-line messages for file-system faults the user can fix: a full disk, a missing permission, a read-only mount.

The command-line tools print these as `error: PATH: REASON` instead of a traceback. Python reports them as OSError;
TensorFlow's file system (TFRecord writers, tf.io.gfile, SavedModel) as an OpError whose message is
`PATH; REASON`. Imports no TensorFlow (the evaluation tools run without it).
"""

import errno
import os
import re
import sys
from typing import Optional

# Faults of the environment, not of the program: the user frees space, fixes permissions or picks another folder.
_USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT,
                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG)
_USER_REASONS = tuple(os.strerror(code) for code in _USER_ERRNOS)


def user_io_message(error: BaseException) -> Optional[str]:
    """`PATH: REASON` for an OSError or a TensorFlow file-system error of a kind above; None for anything else."""
    if isinstance(error, OSError) and error.errno in _USER_ERRNOS:
        return f'{error.filename}: {error.strerror}' if error.filename else f'{error.strerror}'
    tf = sys.modules.get('tensorflow')
    if tf is not None and isinstance(error, tf.errors.OpError):
        path, _, reason = op_error_text(error).rpartition('; ')  # 'PATH; REASON'
        if reason in _USER_REASONS or isinstance(error, tf.errors.PermissionDeniedError):
            return f'{path}: {reason}' if path else reason
    return None


def op_error_text(error: Exception) -> str:
    """The first line of a TensorFlow OpError's message without its '{{function_node ...}}' and '[Op:...]' tags."""
    message = re.sub(r'\{\{[^}]*\}\}|\[Op:[^\]]*\]( name: \S*)?', '', getattr(error, 'message', str(error)))
    return (message.strip().splitlines() or [''])[0].strip()


def with_path(error: OSError, path: str) -> OSError:
    """`error` naming `path` when it names no file (a write to an open file reports only its errno)."""
    if error.filename is None and error.errno is not None:
        return type(error)(error.errno, error.strerror, path)
    return error
