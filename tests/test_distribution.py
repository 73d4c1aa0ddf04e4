"""trainer/distribution_utils.py and trainer/cluster.py: TPU resolution (stubbed at TensorFlow's boundary),
TF_CONFIG checks, --num_cpu_replicas on the command line, and a one-process strategy's worker."""

import json
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from trainer import cluster
from trainer import distribution_utils

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = os.path.join(_REPO, 'configs', 'synthetic', 'axial_deeplab_tiny.textproto')


@pytest.fixture
def tpu_calls(monkeypatch):
    """Replaces TensorFlow's TPU entry points with recorders; returns the list of calls."""
    calls = []

    class Resolver:
        def __init__(self, tpu=None):
            calls.append(('TPUClusterResolver', tpu))

    monkeypatch.setattr(tf.distribute.cluster_resolver, 'TPUClusterResolver', Resolver)
    monkeypatch.setattr(tf.config, 'experimental_connect_to_cluster',
                        lambda resolver: calls.append(('connect_to_cluster', type(resolver).__name__)))
    monkeypatch.setattr(tf.tpu.experimental, 'initialize_tpu_system',
                        lambda resolver: calls.append(('initialize_tpu_system', type(resolver).__name__)))
    monkeypatch.setattr(tf.distribute, 'TPUStrategy',
                        lambda resolver: calls.append(('TPUStrategy', type(resolver).__name__)) or 'strategy')
    return calls


def test_master_local_is_the_tpu_vm_own_tpu(tpu_calls):
    assert distribution_utils.create_strategy('local') == 'strategy'
    assert tpu_calls == [('TPUClusterResolver', 'local'), ('initialize_tpu_system', 'Resolver'),
                         ('TPUStrategy', 'Resolver')]


@pytest.mark.parametrize('master', ['my-pod-slice', 'grpc://10.0.0.2:8470'])
def test_master_name_or_address_connects_to_the_cluster(tpu_calls, master):
    distribution_utils.create_strategy(master)
    assert tpu_calls == [('TPUClusterResolver', master), ('connect_to_cluster', 'Resolver'),
                         ('initialize_tpu_system', 'Resolver'), ('TPUStrategy', 'Resolver')]


@pytest.mark.parametrize('tf_config,message', [
    ({'cluster': {'worker': ['127.0.0.1:1'], 'ps': ['127.0.0.1:2']}, 'task': {'type': 'worker', 'index': 0}},
     r"jobs \['ps'\] are not supported"),
    ({'cluster': {'worker': ['127.0.0.1:1']}, 'task': {'type': 'worker', 'index': 1}}, 'is not in its cluster'),
    ({'cluster': {'worker': ['127.0.0.1:1']}}, 'must hold'),
])
def test_bad_tf_config_is_named(monkeypatch, tf_config, message):
    monkeypatch.setenv('TF_CONFIG', json.dumps(tf_config))
    with pytest.raises(ValueError, match=message):
        distribution_utils.create_strategy(None)


def test_cpu_replicas_do_not_combine_with_other_strategies(monkeypatch):
    with pytest.raises(ValueError, match='--num_cpu_replicas=2 cannot be combined'):
        distribution_utils.create_strategy(None, num_gpus=1, num_cpu_replicas=2)
    monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': {'worker': ['127.0.0.1:1']},
                                                'task': {'type': 'worker', 'index': 0}}))
    with pytest.raises(ValueError, match='TF_CONFIG'):
        distribution_utils.create_strategy(None, num_cpu_replicas=2)


def test_one_process_strategy_is_a_single_chief():
    worker = cluster.worker_info(tf.distribute.OneDeviceStrategy('/cpu:0'))
    assert worker == cluster.WorkerInfo(index=0, num_workers=1) and worker.is_chief
    assert cluster.gather_objects(tf.distribute.OneDeviceStrategy('/cpu:0'), worker, {'a': 1}) == [{'a': 1}]


def test_num_cpu_replicas_flag_selects_mirrored_strategy(tmp_path):
    """--num_cpu_replicas=2 reaches the strategy (the run then stops at the checks before the model is built: the
    data pattern matches nothing)."""
    proc = subprocess.run([sys.executable, '-m', 'trainer.train', f'--config_file={_TINY}', '--mode=eval',
                           f'--model_dir={tmp_path}', '--num_cpu_replicas=2', '--config_param=DATA_DIR=/d'],
                          cwd=_REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', PYTHONPATH=_REPO))
    assert proc.returncode == 2 and "file_pattern '/d/val" in proc.stderr, proc.stderr[-2000:]
    assert 'with MirroredStrategy x2' in proc.stderr
