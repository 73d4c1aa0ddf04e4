"""Every light command-line tool answers --help without importing TensorFlow (which takes 5-25 s to load): the flags
are parsed first and TensorFlow is imported afterwards. Checked by module, not by time."""

import os
import subprocess
import sys

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_RUN_HELP = '''
import runpy, sys
sys.argv = [sys.argv[1], '--help']
try:
    runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
except SystemExit:
    pass
print('TENSORFLOW_IMPORTED', 'tensorflow' in sys.modules)
'''


@pytest.mark.parametrize('module, flag', [
    ('trainer.train', '--config_file'),
    ('trainer.export_model', '--merge_with_tf_op'),
    ('trainer.demo', '--output_dir'),
    ('deeplab_axial.predict', '--saved_model'),
    ('evaluation.evaluate', '--gt_json'),
    ('deeplab_axial.data.build_coco_data', '--treat_crowd_as_ignore'),
    ('deeplab_axial.data.build_cityscapes_data', '--cityscapes_root'),
    ('deeplab_axial.tools.convert_checkpoint', '--saved_model'),
])
def test_help_answers_before_tensorflow_is_imported(module, flag):
    proc = subprocess.run([sys.executable, '-c', _RUN_HELP, module], cwd=_REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=_REPO))
    assert flag in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert 'TENSORFLOW_IMPORTED False' in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
