"""benchmarks/gpu_train_axial_deeplab_l.py in its CPU smoke mode (tiny model, small crop): the script runs
end to end in mixed_float16 with loss scaling and reports consistent numbers, apart from the GPU."""

import os
import re
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_cpu_smoke_mode():
    proc = subprocess.run(
        [sys.executable, os.path.join(_REPO, 'benchmarks', 'gpu_train_axial_deeplab_l.py'), '--model',
         'axial_deeplab_tiny', '--crop', '33', '--steps', '2', '--batch', '2', '--policy', 'mixed_float16'],
        cwd=_REPO, capture_output=True, text=True, timeout=600, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert 'axial_deeplab_tiny crop 33x33 batch 2 mixed_float16' in out
    median = float(re.search(r'step time median: ([0-9.]+) s over 2 steps', out).group(1))
    images_per_second = float(re.search(r'images/s: ([0-9.]+)', out).group(1))
    assert images_per_second == pytest.approx(2 / median, rel=0.02, abs=0.02)
    assert 'peak GPU memory: n/a (no GPU)' in out


def test_rejects_zero_steps():
    proc = subprocess.run([sys.executable, os.path.join(_REPO, 'benchmarks', 'gpu_train_axial_deeplab_l.py'),
                           '--steps', '0'], cwd=_REPO, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
    assert proc.returncode == 2 and '--steps must be at least 1' in proc.stderr
