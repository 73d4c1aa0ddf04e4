"""A deeplab2 user's usual mistakes with the trainer: each is one `error:` line naming the file, field or flag, exit
status 2, nothing written, and found before the model is built (`train_lib._run`, which builds it, is replaced by a
function that fails the test). In-process calls of `trainer.train.main`: no subprocess, no TensorFlow model."""

import os

from absl import flags
from absl.testing import flagsaver
import pytest

from deeplab_axial import cli
from deeplab_axial.protos import dataset_pb2
from trainer import data_options
from trainer import model_dir as model_dir_lib
from trainer import train
from trainer import train_lib

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TINY = os.path.join(_REPO, 'configs', 'synthetic', 'axial_deeplab_tiny.textproto')
_EXPERIMENT = 'synthetic_axial_deeplab_tiny'


@pytest.fixture
def data_dir(tmp_path):
    """Files the tiny config's file patterns match (never read: every mistake stops before reading)."""
    folder = tmp_path / 'data'
    folder.mkdir()
    for name in ('train-00000.tfrecord', 'val-00000.tfrecord'):
        (folder / name).write_bytes(b'')
    return str(folder)


@pytest.fixture
def model_built(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError('the model was built before the mistake was found')

    monkeypatch.setattr(train_lib, '_run', fail)


def _config(tmp_path, old: str, new: str) -> str:
    """The tiny config with `old` (which it holds) replaced by `new`."""
    with open(_TINY) as f:
        text = f.read()
    assert old in text
    path = tmp_path / 'config.textproto'
    path.write_text(text.replace(old, new))
    return str(path)


def _train(capsys, *args) -> tuple:
    with flagsaver.flagsaver():
        flags.FLAGS(['train', *args])
        code = train.main(['train'])
    err = capsys.readouterr().err
    return code, err


def _files(folder) -> list:
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names)


def _check(capsys, model_dir, message, *args):
    """Runs the trainer on `args`; asserts status 2, one error line matching `message`, nothing new in model_dir."""
    before = _files(model_dir)
    code, err = _train(capsys, f'--model_dir={model_dir}', *args)
    assert code == cli.EXIT_USER_ERROR, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err
    assert message in lines[0], (message, lines[0])
    assert _files(model_dir) == before


def test_missing_config_file(capsys, tmp_path, model_built):
    missing = str(tmp_path / 'nope.textproto')
    _check(capsys, tmp_path, missing, f'--config_file={missing}', '--mode=train')


def test_misspelled_field(capsys, tmp_path, model_built, data_dir):
    config = _config(tmp_path, 'steps_per_loop:', 'steps_per_lop:')
    _check(capsys, tmp_path, 'steps_per_lop', f'--config_file={config}', '--mode=train',
           f'--config_param=DATA_DIR={data_dir}')


def test_wrong_typed_value(capsys, tmp_path, model_built, data_dir):
    config = _config(tmp_path, 'steps_per_loop: 50', 'steps_per_loop: "two"')
    _check(capsys, tmp_path, 'steps_per_loop', f'--config_file={config}', '--mode=train',
           f'--config_param=DATA_DIR={data_dir}')


def test_unfilled_placeholder(capsys, tmp_path, model_built, monkeypatch):
    monkeypatch.delenv('DATA_DIR', raising=False)
    _check(capsys, tmp_path, 'DATA_DIR', f'--config_file={_TINY}', '--mode=train')


def test_unknown_backbone(capsys, tmp_path, model_built, data_dir):
    config = _config(tmp_path, 'name: "axial_deeplab_tiny"', 'name: "axial_deeplab_q"')
    _check(capsys, tmp_path, "model_options.backbone.name 'axial_deeplab_q' is not a registered model",
           f'--config_file={config}', '--mode=train', f'--config_param=DATA_DIR={data_dir}')


def test_output_stride_the_encoder_does_not_build(capsys, tmp_path, model_built, data_dir):
    config = _config(tmp_path, 'output_stride: 16', 'output_stride: 8')
    _check(capsys, tmp_path, 'model_options.backbone.output_stride must be one of (16, 32)',
           f'--config_file={config}', '--mode=train', f'--config_param=DATA_DIR={data_dir}')


@pytest.mark.parametrize('mode, field', [('train', 'train_dataset_options'), ('eval', 'eval_dataset_options')])
def test_file_pattern_matching_nothing_names_the_field(capsys, tmp_path, model_built, mode, field):
    empty = tmp_path / 'empty'
    empty.mkdir()
    _check(capsys, tmp_path, f"{field}.file_pattern '{empty}/", f'--config_file={_TINY}', f'--mode={mode}',
           f'--config_param=DATA_DIR={empty}')


def test_unprepared_tfds_names_dataset_split_and_folder(capsys, tmp_path, model_built, data_dir):
    pytest.importorskip('tensorflow_datasets')
    tfds_dir = tmp_path / 'tfds'
    tfds_dir.mkdir()
    config = _config(tmp_path, 'file_pattern: "${DATA_DIR}/val*.tfrecord"',
                     f'file_pattern: "tfds:coco/2017_panoptic" tfds_data_dir: "{tfds_dir}"')
    _check(capsys, tmp_path, "eval_dataset_options.file_pattern \"tfds:coco/2017_panoptic\": TFDS dataset "
                             "coco/2017_panoptic (split 'validation') is not prepared in", f'--config_file={config}',
           '--mode=train_and_eval', f'--config_param=DATA_DIR={data_dir}')


def test_tfds_split_defaults_train_for_training_and_validation_for_evaluation():
    options = dataset_pb2.DatasetOptions(file_pattern=['tfds:coco/2017_panoptic'])
    assert data_options.tfds_split(options, is_training=True) == 'train'
    assert data_options.tfds_split(options, is_training=False) == 'validation'
    options.tfds_split = 'validation[:10%]'
    assert data_options.tfds_split(options, is_training=False) == 'validation[:10%]'


def test_model_dir_that_is_a_file(capsys, tmp_path, model_built, data_dir):
    model_dir = tmp_path / 'runs'
    model_dir.write_text('')
    before = _files(tmp_path)
    code, err = _train(capsys, f'--model_dir={model_dir}', f'--config_file={_TINY}', '--mode=train',
                       f'--config_param=DATA_DIR={data_dir}')
    assert code == cli.EXIT_USER_ERROR and err == f'error: --model_dir {model_dir} is a file; expected a folder ' \
                                                  '(the experiment writes to model_dir/experiment_name)\n'
    assert _files(tmp_path) == before


def test_eval_without_checkpoint(capsys, tmp_path, model_built, data_dir):
    _check(capsys, tmp_path, f'--mode=eval: no checkpoint in {tmp_path}/{_EXPERIMENT}', f'--config_file={_TINY}',
           '--mode=eval', f'--config_param=DATA_DIR={data_dir}')


def test_experiment_folder_held_by_another_trainer(capsys, tmp_path, model_built, data_dir):
    experiment_dir = tmp_path / 'runs' / _EXPERIMENT
    experiment_dir.mkdir(parents=True)
    lock = model_dir_lib.TrainingLock(str(experiment_dir))
    lock.acquire()  # this process holds it, as a running trainer would
    try:
        _check(capsys, tmp_path / 'runs', 'is in use by another trainer (host ', f'--config_file={_TINY}',
               '--mode=train', f'--config_param=DATA_DIR={data_dir}')
    finally:
        lock.release()


def test_unknown_flag_is_one_line_and_status_2(capsys):
    with flagsaver.flagsaver(), pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(['train', '--merge_with_tf_opp'])
    assert exit_info.value.code == cli.EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('error: ') and 'merge_with_tf_opp' in err
