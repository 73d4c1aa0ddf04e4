"""trainer/model_dir.py: the training lock (holder named, stale locks taken over), checkpoint temporaries, config
copy."""

import json
import logging
import os
import socket
import subprocess
import sys

import pytest

from deeplab_axial import config_utils
from trainer import model_dir

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = os.path.join(_REPO, 'configs', 'synthetic', 'axial_deeplab_tiny.textproto')


def _write_lock(directory, **fields):
    record = {'host': socket.gethostname(), 'pid': os.getpid(), 'process_start': None,
              'start_time': '2020-01-01T00:00:00+00:00', 'command': 'python -m trainer.train --mode=train'}
    record.update(fields)
    with open(os.path.join(directory, model_dir.LOCK_NAME), 'w') as f:
        json.dump(record, f)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def test_lock_records_its_holder_and_is_removed_on_exit(tmp_path):
    with model_dir.TrainingLock(str(tmp_path)) as lock:
        with open(lock.path) as f:
            record = json.load(f)
        assert record['host'] == socket.gethostname() and record['pid'] == os.getpid()
        assert record['start_time'][:4].isdigit()
        assert os.listdir(tmp_path) == [model_dir.LOCK_NAME]
    assert os.listdir(tmp_path) == []


def test_second_trainer_is_refused_naming_the_holder(tmp_path):
    with model_dir.TrainingLock(str(tmp_path)):
        with pytest.raises(model_dir.ModelDirLockedError) as e:
            model_dir.TrainingLock(str(tmp_path)).acquire()
        assert os.path.exists(tmp_path / model_dir.LOCK_NAME)  # the holder keeps it
    message = str(e.value)
    assert f'pid {os.getpid()}' in message and socket.gethostname() in message and str(tmp_path) in message


def test_lock_of_a_dead_process_on_this_host_is_taken_over(tmp_path, caplog):
    pid = _dead_pid()
    _write_lock(str(tmp_path), pid=pid)
    with caplog.at_level(logging.WARNING, logger='absl'):
        with model_dir.TrainingLock(str(tmp_path)) as lock:
            with open(lock.path) as f:
                assert json.load(f)['pid'] == os.getpid()
    assert any('Taking over' in r.getMessage() and f'pid {pid}' in r.getMessage() for r in caplog.records)


def test_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    # The recorded pid is alive (this process) but started at another time: the number was reused.
    _write_lock(str(tmp_path), process_start=1)
    with model_dir.TrainingLock(str(tmp_path)):
        pass


def test_lock_from_another_host_is_not_taken_over(tmp_path):
    _write_lock(str(tmp_path), host='other-host', pid=_dead_pid())
    with pytest.raises(model_dir.ModelDirLockedError, match='host other-host.*delete'):
        model_dir.TrainingLock(str(tmp_path)).acquire()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    lock = model_dir.TrainingLock(str(tmp_path))
    _write_lock(str(tmp_path), host='other-host')
    lock.release()
    assert os.path.exists(lock.path)


def test_remove_checkpoint_temporaries_only(tmp_path):
    (tmp_path / 'ckpt-20_temp').mkdir()
    (tmp_path / 'ckpt-20_temp' / 'part-00000-of-00001.data-00000-of-00001').write_bytes(b'x')
    (tmp_path / ('checkpoint.tmp' + '0123456789abcdef' * 2)).write_text('partial')
    kept = ['checkpoint', 'ckpt-18.index', 'ckpt-18.data-00000-of-00001', 'config.textproto', 'ckpt-7_temp_notes']
    for name in kept:
        (tmp_path / name).write_text('')
    removed = model_dir.remove_checkpoint_temporaries(str(tmp_path))
    assert sorted(os.path.basename(p) for p in removed) == ['checkpoint.tmp' + '0123456789abcdef' * 2, 'ckpt-20_temp']
    assert sorted(os.listdir(tmp_path)) == sorted(kept)


def test_config_copy_round_trips(tmp_path):
    config = config_utils.load_config(_TINY, params={'DATA_DIR': '/data/synth'})
    config.trainer_options.seed = 7
    path = model_dir.write_config_copy(config, str(tmp_path))
    assert path == os.path.join(str(tmp_path), model_dir.CONFIG_COPY_NAME)
    assert config_utils.load_config(path) == config
    assert os.listdir(tmp_path) == [model_dir.CONFIG_COPY_NAME]
