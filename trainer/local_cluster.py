r"""Runs a command as N workers of a MultiWorkerMirroredStrategy cluster on this host (127.0.0.1 ports): the
multi-worker path (TF_CONFIG, chief-only writes, sharded evaluation, preemption) without a cluster.

  python -m trainer.local_cluster --num_workers=2 --log_dir=/tmp/logs -- \
      python -m trainer.train --config_file=CONFIG --mode=train_and_eval --model_dir=/tmp/runs

Each worker gets TF_CONFIG {"cluster": {"worker": [...]}, "task": {"type": "worker", "index": i}} and writes its
output to log_dir/worker_<i>.log. The exit status is the first non-zero one of the workers (0 if all succeed); with
--timeout the workers still running then are killed.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence


def free_ports(count: int) -> List[int]:
    """`count` distinct 127.0.0.1 ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(('127.0.0.1', 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_configs(num_workers: int) -> List[str]:
    """One TF_CONFIG per worker of a loopback cluster."""
    cluster = {'worker': [f'127.0.0.1:{port}' for port in free_ports(num_workers)]}
    return [json.dumps({'cluster': cluster, 'task': {'type': 'worker', 'index': i}}) for i in range(num_workers)]


class LocalCluster:
    """Worker processes of one loopback cluster; `with LocalCluster(...)` kills whatever still runs on exit.

    Args:
      commands: the command of each worker (the same for all, or one each).
      log_dir: worker i writes stdout and stderr to log_dir/worker_<i>.log.
      env: the environment (default: this process's), plus TF_CONFIG.
      cwd: the workers' working folder.
    """

    def __init__(self, commands: Sequence[Sequence[str]], log_dir: str, env: Optional[Dict[str, str]] = None,
                 cwd: Optional[str] = None):
        os.makedirs(log_dir, exist_ok=True)
        self.log_paths = [os.path.join(log_dir, f'worker_{i}.log') for i in range(len(commands))]
        self.procs: List[subprocess.Popen] = []
        for command, tf_config, log_path in zip(commands, tf_configs(len(commands)), self.log_paths):
            with open(log_path, 'w') as log:
                self.procs.append(subprocess.Popen(list(command), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                                   env=dict(env if env is not None else os.environ,
                                                            TF_CONFIG=tf_config)))

    def log(self, index: int) -> str:
        with open(self.log_paths[index]) as f:
            return f.read()

    def wait(self, timeout: Optional[float] = None) -> List[Optional[int]]:
        """Waits up to `timeout` seconds in all (None = forever); the exit codes (None: still running)."""
        deadline = None if timeout is None else time.time() + timeout
        for proc in self.procs:
            try:
                proc.wait(None if deadline is None else max(deadline - time.time(), 0.01))
            except subprocess.TimeoutExpired:
                pass
        return [proc.poll() for proc in self.procs]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def __enter__(self) -> 'LocalCluster':
        return self

    def __exit__(self, *exc_info) -> None:
        self.kill()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--num_workers', type=int, default=2)
    parser.add_argument('--log_dir', required=True)
    parser.add_argument('--timeout', type=float, default=None, help='Seconds before the workers are killed.')
    parser.add_argument('command', nargs=argparse.REMAINDER, help='The command, after --.')
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if args.num_workers < 1 or not command:
        parser.error('--num_workers must be >= 1 and a command must follow --')
    with LocalCluster([command] * args.num_workers, args.log_dir) as cluster:
        codes = cluster.wait(args.timeout)
    for i, code in enumerate(codes):
        print(f'worker {i}: ' + ('killed at the timeout' if code is None else f'exit status {code}') +
              f' ({cluster.log_paths[i]})')
    return next((1 if code is None else code for code in codes if code != 0), 0)


if __name__ == '__main__':
    sys.exit(main())
