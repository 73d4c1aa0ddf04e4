"""What every command-line tool shares: one error line, the exit statuses, absl flag parsing.

A user error (a flag, a config field, a data source, a path) ends a tool with one line on stderr, `error: ...`,
naming the flag, field or file and what was expected, exit status 2, and nothing written. Tracebacks are for bugs.
The statuses (the README's table):

  0   done
  1   ran, and stopped on an outcome named in one line (a non-finite loss, workers that restored different
      checkpoints, a worker that died) or skipped inputs it names (predict, `--validate`); also Python's status for a
      traceback (a bug)
  2   a user error, found before anything was written
  42  (and 143 on GCE GPU VMs) a multi-worker or TPU run saved a checkpoint on a preemption notice: start it again

Imports no TensorFlow: a tool answers `--help` before TensorFlow loads.
"""

import argparse
import sys
from typing import Callable, NoReturn, Sequence, Tuple, Type

from absl import flags

from deeplab_axial import io_errors

EXIT_OK = 0
EXIT_OUTCOME = 1
EXIT_USER_ERROR = 2


def one_line(message: str) -> str:
    """`message` on one line: the lines of a multi-line message joined by '; '."""
    return '; '.join(line.strip() for line in str(message).splitlines() if line.strip())


def print_error(message: str) -> None:
    """Prints `error: MESSAGE` (on one line) to stderr."""
    print(f'error: {one_line(message)}', file=sys.stderr)


def run_reporting_errors(run: Callable[[], int],
                         user_errors: Tuple[Type[BaseException], ...] = (ValueError, FileNotFoundError)) -> int:
    """Runs a tool's work and returns its exit status; a user error (one of `user_errors`, whose messages name the
    flag, field or file, or a file-system fault the user can fix: a full disk, a missing permission) is printed as one
    `error:` line and gives status 2. Anything else raises (a bug: its traceback)."""
    try:
        return run()
    except user_errors as e:
        message = str(e)
    except Exception as e:  # noqa: BLE001 - only the file-system faults of io_errors are reported; the rest raise.
        message = io_errors.user_io_message(e)
        if message is None:
            raise
    print_error(message)
    return EXIT_USER_ERROR


def parse_flags(argv: Sequence[str]) -> list:
    """absl's flag parsing for `app.run(main, flags_parser=cli.parse_flags)`: an unknown, missing or bad flag is one
    `error:` line and exit status 2 (absl's own parser prints its usage and exits 1)."""
    try:
        return flags.FLAGS(list(argv))
    except flags.Error as e:
        print_error(f'{e} (see --help)')
        sys.exit(EXIT_USER_ERROR)


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser for the argparse tools: a bad or missing argument is one `error:` line and exit status 2
    (argparse's own prints its usage first)."""

    def error(self, message: str) -> NoReturn:
        print_error(f'{message} (see {self.prog} --help)')
        sys.exit(EXIT_USER_ERROR)
