"""Config schema, loading, placeholders and validation; every shipped config; gencode up to date."""

import glob
import importlib
import os
import subprocess
import sys

import numpy as np
import pytest
from google.protobuf import descriptor_pb2

from deeplab_axial import config_utils
from deeplab_axial.data import dataset as dataset_lib
from deeplab_axial.model.encoder import axial_resnet
from deeplab_axial.protos import config_pb2
from trainer import config_checks
from trainer import optimizer_builder

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROTO_DIR = os.path.join(_REPO, 'deeplab_axial', 'protos')
_SHIPPED = sorted(glob.glob(os.path.join(_REPO, 'configs', '**', '*.textproto'), recursive=True))

# Written for this test in deeplab2's style (the layout of its Cityscapes axial configs): deeplab2 field names
# only, literal placeholders, comments, `crop_size` repeated, an axial backbone under panoptic_deeplab.
_DEEPLAB2_STYLE = """
# proto-file: deeplab2/config.proto
# proto-message: ExperimentOptions
#
# A Panoptic-DeepLab config in deeplab2's style, with an axial backbone.
experiment_name: "${EXPERIMENT_NAME}"
model_options {
  # Initial checkpoint: ${INIT_CHECKPOINT} (placeholders in comments are left alone).
  initial_checkpoint: "${INIT_CHECKPOINT}"
  backbone {
    name: "max_deeplab_s_backbone"
    output_stride: 16
    drop_path_keep_prob: 0.8
    drop_path_schedule: "linear"
  }
  decoder {
    feature_key: "res5"
    decoder_channels: 256
    aspp_channels: 256
    aspp_use_only_1x1_proj_conv: true
  }
  panoptic_deeplab {
    low_level { feature_key: "res3" channels_project: 64 }
    low_level { feature_key: "res2" channels_project: 32 }
    instance {
      low_level_override { feature_key: "res3" channels_project: 32 }
      low_level_override { feature_key: "res2" channels_project: 16 }
      instance_decoder_override {
        feature_key: "res5"
        decoder_channels: 128
        aspp_use_only_1x1_proj_conv: true
      }
      center_head { output_channels: 1 head_channels: 32 }
      regression_head { output_channels: 2 head_channels: 32 }
    }
    semantic_head { output_channels: 19 head_channels: 256 }
  }
}
trainer_options {
  save_checkpoints_steps: 1000
  save_summaries_steps: 100
  steps_per_loop: 100
  loss_options {
    semantic_loss { name: "softmax_cross_entropy" weight: 1.0 top_k_percent: 0.2 }
    center_loss { name: "mse" weight: 200 }
    regression_loss { name: "l1" weight: 0.01 }
  }
  solver_options {
    base_learning_rate: 0.0001
    training_number_of_steps: 60000
  }
}
train_dataset_options {
  dataset: "cityscapes_panoptic"
  file_pattern: "${TRAIN_SET}"
  batch_size: 32
  crop_size: 1025
  crop_size: 2049
  min_resize_value: 0
  max_resize_value: 0
  augmentations {
    min_scale_factor: 0.5
    max_scale_factor: 2.0
    scale_factor_step_size: 0.1
    autoaugment_policy_name: "simple_classification_policy_magnitude_scale_0.2"
  }
  increase_small_instance_weights: true
  small_instance_weight: 3.0
}
eval_dataset_options {
  dataset: "cityscapes_panoptic"
  file_pattern: "${VAL_SET}"
  batch_size: 1
  crop_size: 1025
  crop_size: 2049
  min_resize_value: 0
  max_resize_value: 0
}
evaluator_options {
  continuous_eval_timeout: -1
  stuff_area_limit: 2048
  center_score_threshold: 0.1
  nms_kernel: 13
  save_predictions: true
  save_raw_predictions: false
  merge_semantic_and_instance_with_tf_op: false
}
"""


def _deeplab2_config(**params) -> config_pb2.ExperimentOptions:
    defaults = {'EXPERIMENT_NAME': 'exp', 'INIT_CHECKPOINT': '/ckpt/init', 'TRAIN_SET': '/d/train*',
                'VAL_SET': '/d/val*'}
    defaults.update(params)
    return config_utils.parse_config(_DEEPLAB2_STYLE, 'deeplab2_style.textproto', params=defaults)


def test_deeplab2_style_config_parses_unchanged_with_deeplab2_defaults():
    config = _deeplab2_config()
    model = config.model_options
    assert model.WhichOneof('meta_architecture') == 'panoptic_deeplab'
    assert model.backbone.name == 'max_deeplab_s_backbone'
    assert model.initial_checkpoint == '/ckpt/init'
    assert [lo.channels_project for lo in model.panoptic_deeplab.instance.low_level_override] == [32, 16]
    assert list(config.train_dataset_options.crop_size) == [1025, 2049]
    assert config.train_dataset_options.file_pattern == ['/d/train*']
    # deeplab2's proto defaults for fields the config leaves out.
    solver = config.trainer_options.solver_options
    assert solver.optimizer == 'adam' and solver.learning_policy == 'poly'
    assert solver.poly_learning_power == pytest.approx(0.9)
    assert config.trainer_options.num_checkpoints_to_keep == 5
    assert config.train_dataset_options.sigma == 8.0
    assert config.train_dataset_options.small_instance_threshold == 4096
    assert config.evaluator_options.keep_k_centers == 400
    assert config.eval_dataset_options.decode_groundtruth_label
    assert model.restore_semantic_last_layer_from_initial_checkpoint
    # Our additions default to the paper's values.
    assert model.backbone.axial_span == 65
    assert model.mixed_precision_policy == 'float32'
    config_checks.validate(config, num_replicas=8)


def test_field_numbers_match_deeplab2():
    """Binary compatibility: a few field numbers from deeplab2's protos."""
    fields = config_pb2.ExperimentOptions.DESCRIPTOR.fields_by_name
    assert [fields[n].number for n in ('experiment_name', 'model_options', 'trainer_options',
                                       'train_dataset_options', 'evaluator_options', 'eval_dataset_options')] \
        == [1, 2, 3, 4, 5, 6]
    model = config_pb2.ModelOptions.DESCRIPTOR.fields_by_name
    assert model['panoptic_deeplab'].number == 5 and model['initial_checkpoint'].number == 6
    assert model['restore_instance_last_layer_from_initial_checkpoint'].number == 9
    solver = config_pb2.SolverOptions.DESCRIPTOR.fields_by_name
    assert solver['batchnorm_momentum'].number == 14 and solver['adamw_weight_decay'].number == 17
    evaluator = config_pb2.EvaluatorOptions.DESCRIPTOR.fields_by_name
    assert evaluator['add_flipped_images'].number == 5 and evaluator['eval_scales'].number == 15


def test_binary_round_trip_keeps_extensions():
    config = _deeplab2_config()
    config.model_options.backbone.axial_span = 33
    config.trainer_options.solver_options.use_lookahead = True
    again = config_pb2.ExperimentOptions.FromString(config.SerializeToString())
    assert again == config


def test_unfilled_placeholder_names_file_line_and_variable():
    with pytest.raises(config_utils.ConfigError) as e:
        config_utils.parse_config(_DEEPLAB2_STYLE, 'deeplab2_style.textproto',
                                  params={'EXPERIMENT_NAME': 'e', 'INIT_CHECKPOINT': 'c', 'VAL_SET': 'v'})
    message = str(e.value)
    line = _DEEPLAB2_STYLE.split('\n').index('  file_pattern: "${TRAIN_SET}"') + 1
    assert f'deeplab2_style.textproto:{line}: ${{TRAIN_SET}}' in message
    assert 'VAL_SET' not in message and 'INIT_CHECKPOINT' not in message


def test_placeholders_from_environment_and_params_take_precedence(monkeypatch):
    monkeypatch.setenv('TRAIN_SET', '/env/train*')
    monkeypatch.setenv('VAL_SET', '/env/val*')
    config = config_utils.parse_config(_DEEPLAB2_STYLE, params={'EXPERIMENT_NAME': 'e', 'INIT_CHECKPOINT': 'c',
                                                                'VAL_SET': '/flag/val*'})
    assert config.train_dataset_options.file_pattern == ['/env/train*']
    assert config.eval_dataset_options.file_pattern == ['/flag/val*']


def test_placeholder_values_with_quotes_are_escaped():
    config = _deeplab2_config(EXPERIMENT_NAME='a "quoted" \\ name')
    assert config.experiment_name == 'a "quoted" \\ name'


def test_allow_unfilled_keeps_literal_placeholders():
    config = config_utils.parse_config(_DEEPLAB2_STYLE, allow_unfilled=True)
    assert config.experiment_name == '${EXPERIMENT_NAME}'


def test_parse_error_names_file_line_and_column(tmp_path):
    path = tmp_path / 'bad.textproto'
    path.write_text('experiment_name: "x"\nmodel_options {\n  backbone {\n    nmae: "axial_deeplab_s"\n  }\n}\n')
    with pytest.raises(config_utils.ConfigError, match=r'bad\.textproto:4:\d+: .*nmae'):
        config_utils.load_config(str(path))


def test_missing_file_is_named():
    with pytest.raises(config_utils.ConfigError, match='no_such.textproto'):
        config_utils.load_config('/nonexistent/no_such.textproto')


@pytest.mark.parametrize('mutate, fields', [
    (lambda c: c.train_dataset_options.ClearField('crop_size') or c.train_dataset_options.crop_size.extend(
        [1024, 2049]), ['train_dataset_options.crop_size', 'model_options.backbone.output_stride', '1025']),
    (lambda c: setattr(c.model_options.backbone, 'axial_span', 64), ['model_options.backbone.axial_span']),
    # The encoder's table: output stride 8 used to pass here and fail at build naming no field.
    (lambda c: setattr(c.model_options.backbone, 'output_stride', 8),
     ['model_options.backbone.output_stride must be one of (16, 32)', 'Received: 8']),
    (lambda c: c.eval_dataset_options.ClearField('crop_size'), ['eval_dataset_options.crop_size must hold']),
    (lambda c: setattr(c.train_dataset_options, 'batch_size', 30), ['train_dataset_options.batch_size', '(8)']),
    (lambda c: setattr(c.train_dataset_options, 'dataset', 'citiscapes'),
     ['train_dataset_options.dataset', "'citiscapes'", 'cityscapes_panoptic', 'coco_panoptic']),
    (lambda c: setattr(c.model_options.panoptic_deeplab.semantic_head, 'output_channels', 20),
     ['semantic_head.output_channels (20)', "'cityscapes_panoptic' (19)"]),
    (lambda c: setattr(c.trainer_options.solver_options, 'optimizer', 'adagrad'),
     ['trainer_options.solver_options.optimizer', "'adagrad'"]),
    (lambda c: setattr(c.trainer_options.solver_options, 'warmup_steps', 60000),
     ['warmup_steps (60000)', 'training_number_of_steps (60000)']),
    (lambda c: setattr(c.model_options, 'mixed_precision_policy', 'float16'),
     ['model_options.mixed_precision_policy']),
    (lambda c: c.trainer_options.loss_options.ClearField('center_loss'),
     ['trainer_options.loss_options.center_loss must be set']),
    (lambda c: setattr(c.trainer_options.loss_options.semantic_loss, 'top_k_percent', 0.0),
     ['semantic_loss.top_k_percent']),
    (lambda c: setattr(c.trainer_options.loss_options.center_loss, 'name', 'l1'),
     ["trainer_options.loss_options.center_loss.name must be 'mse'", "Received: 'l1'"]),
    (lambda c: setattr(c.trainer_options.loss_options.semantic_loss, 'name', 'focal_softmax_cross_entropy'),
     ["semantic_loss.name must be 'softmax_cross_entropy'"]),
    (lambda c: setattr(c.trainer_options.loss_options.classification_loss, 'weight', 1.0),
     ['trainer_options.loss_options.classification_loss is not used by the panoptic_deeplab meta-architecture']),
    (lambda c: setattr(c.evaluator_options, 'nms_kernel', 4), ['evaluator_options.nms_kernel']),
    (lambda c: setattr(c.eval_dataset_options, 'dataset', 'imagenet'),
     ['eval_dataset_options.dataset', 'classification dataset']),
])
def test_validation_errors_name_the_fields(mutate, fields):
    config = _deeplab2_config()
    mutate(config)
    with pytest.raises(config_utils.ConfigError) as e:
        config_checks.validate(config, num_replicas=8)
    for text in fields:
        assert text in str(e.value)


@pytest.mark.parametrize('field, values', [
    ('trainer_options.solver_options.optimizer', optimizer_builder.OPTIMIZERS),
    ('trainer_options.solver_options.learning_policy', optimizer_builder.LEARNING_POLICIES),
    ('model_options.mixed_precision_policy', optimizer_builder.PRECISION_POLICIES),
    ('model_options.backbone.output_stride', axial_resnet.OUTPUT_STRIDES),
    ('model_options.backbone.drop_path_schedule', axial_resnet.DROP_PATH_SCHEDULES),
])
def test_validation_accepts_exactly_the_values_the_code_builds(field, values):
    *path, name = field.split('.')

    def validated(value):
        config = _deeplab2_config()
        message = config
        for part in path:
            message = getattr(message, part)
        setattr(message, name, value)
        config.train_dataset_options.ClearField('crop_size')
        config.train_dataset_options.crop_size.extend([1025, 2049])  # k * 32 + 1: every output stride
        try:
            config_checks.validate(config, num_replicas=8)
        except config_utils.ConfigError as e:
            return str(e)
        return None
    for value in values:
        assert validated(value) is None, value
    wrong = 'other' if isinstance(values[0], str) else 2 * max(values)
    assert field in validated(wrong) and str(tuple(values)) in validated(wrong)


def test_validation_reports_all_violations_at_once():
    config = _deeplab2_config()
    config.model_options.backbone.axial_span = 4
    config.trainer_options.solver_options.optimizer = 'x'
    with pytest.raises(config_utils.ConfigError) as e:
        config_checks.validate(config)  # the library's rules and the trainer's in one error
    assert 'axial_span' in str(e.value) and 'optimizer' in str(e.value)


def test_the_library_leaves_the_trainers_fields_to_the_trainer():
    """Export and prediction validate with the library's rules alone: a solver they never build does not stop them,
    and further rules passed in are reported with the library's."""
    config = _deeplab2_config()
    config.trainer_options.solver_options.optimizer = 'adagrad'
    config_utils.validate(config)
    config.model_options.backbone.axial_span = 4
    with pytest.raises(config_utils.ConfigError) as e:
        config_utils.validate(config, checks=[lambda c: [f'rule of a higher layer ({c.experiment_name})']])
    assert 'model_options.backbone.axial_span' in str(e.value) and 'rule of a higher layer (exp)' in str(e.value)
    assert 'adagrad' not in str(e.value)


def test_unsupported_meta_architecture_is_rejected():
    config = _deeplab2_config()
    config.model_options.max_deeplab.SetInParent()
    with pytest.raises(config_utils.ConfigError, match="'max_deeplab' is not supported"):
        config_utils.validate(config)


def test_dataset_descriptor_block_registers_a_user_dataset():
    text = _DEEPLAB2_STYLE.replace('dataset: "cityscapes_panoptic"', 'dataset: "my_roads"', 1).replace(
        'train_dataset_options {', '''train_dataset_options {
  dataset_descriptor {
    name: "my_roads"
    splits_to_sizes { key: "train" value: 10 }
    num_classes: 3
    ignore_label: 255
    panoptic_label_divisor: 1000
    class_has_instances_list: 2
    class_names: "road" class_names: "sky" class_names: "car"
    colormap { r: 1 g: 2 b: 3 } colormap { r: 4 g: 5 b: 6 } colormap { r: 7 g: 8 b: 9 }
  }''', 1).replace('output_channels: 19', 'output_channels: 3')
    config = config_utils.parse_config(text, params={'EXPERIMENT_NAME': 'e', 'INIT_CHECKPOINT': 'c',
                                                     'TRAIN_SET': 't', 'VAL_SET': 'v'})
    config.eval_dataset_options.dataset = 'my_roads'
    descriptors = config_utils.validate(config)
    assert descriptors['train'] == dataset_lib.get('my_roads')
    assert descriptors['train'].thing_classes == (2,)
    assert descriptors['train'].colormap[2] == (7, 8, 9)
    assert descriptors['train'].splits_to_sizes == {'train': 10}


def test_dataset_descriptor_name_must_match():
    config = _deeplab2_config()
    config.train_dataset_options.dataset_descriptor.name = 'other'
    with pytest.raises(config_utils.ConfigError, match='dataset_descriptor.name'):
        config_utils.validate(config)


def test_shipped_configs_exist():
    names = {os.path.relpath(p, os.path.join(_REPO, 'configs')) for p in _SHIPPED}
    expected = {f'imagenet/axial_resnet_{v}.textproto' for v in 'sml'}
    expected |= {f'cityscapes/axial_deeplab/axial_deeplab_{v}_os16.textproto' for v in ('s', 'm', 'l', 'xl')}
    expected |= {f'coco/axial_deeplab/axial_deeplab_{v}_os16.textproto' for v in 'sml'}
    expected |= {'synthetic/axial_deeplab_tiny.textproto', 'synthetic/axial_resnet_tiny.textproto'}
    # deeplab2's Cityscapes Axial-DeepLab configs (its released models; tests/test_deeplab2_family.py).
    expected |= {f'cityscapes/axial_deeplab/{v}_os16.textproto' for v in (
        'axial_swidernet_1_1_1', 'axial_swidernet_1_1_3', 'axial_swidernet_1_1_4.5', 'max_deeplab_s_backbone',
        'max_deeplab_l_backbone')}
    assert expected <= names


@pytest.mark.parametrize('path', _SHIPPED, ids=lambda p: os.path.relpath(p, _REPO))
def test_shipped_config_parses_and_validates(path):
    with open(path) as f:
        head = f.read().split('\n')[:2]
    assert head == ['# proto-file: deeplab_axial/protos/config.proto', '# proto-message: ExperimentOptions']
    config = config_utils.load_config(path, params={'EXPERIMENT_NAME': 'e', 'INIT_CHECKPOINT': '/c',
                                                    'TRAIN_SET': '/t', 'VAL_SET': '/v', 'DATA_DIR': '/d'})
    config_checks.validate(config, num_replicas=1 if 'synthetic' in path else 8)


def test_shipped_panoptic_recipes_follow_the_paper():
    # Our axial_deeplab_* recipes; deeplab2's configs beside them keep deeplab2's recipe (test_deeplab2_family.py).
    for path in _SHIPPED:
        if '/axial_deeplab/axial_deeplab_' not in path:
            continue
        config = config_utils.load_config(path, allow_unfilled=True)
        solver = config.trainer_options.solver_options
        assert (solver.optimizer, solver.use_lookahead, solver.base_learning_rate) == ('radam', True,
                                                                                        pytest.approx(1e-3))
        assert solver.warmup_steps > 0
        losses = config.trainer_options.loss_options
        assert (losses.semantic_loss.weight, losses.center_loss.weight, losses.regression_loss.weight) == \
            (1.0, 200.0, pytest.approx(0.01))
        assert losses.semantic_loss.top_k_percent == pytest.approx(0.2)
        assert config.model_options.backbone.axial_span == 65
        crop = list(config.train_dataset_options.crop_size)
        assert crop == ([1025, 2049] if 'cityscapes' in path else [1025, 1025])


def _regenerate(tmp_path):
    protos = sorted(glob.glob(os.path.join(_PROTO_DIR, '*.proto')))
    rel = [os.path.relpath(p, _REPO) for p in protos]
    descriptor_set = os.path.join(str(tmp_path), 'protos.pb')
    subprocess.run([sys.executable, '-m', 'grpc_tools.protoc', f'-I{_REPO}', f'--python_out={tmp_path}',
                    f'--descriptor_set_out={descriptor_set}'] + rel, check=True, cwd=_REPO)
    return protos, descriptor_set


def _normalised(file_proto):
    """Drops what differs only in form between protoc's descriptor sets and the Python gencode: json_name (only
    in the former) and the spelling of float defaults ('0.7' versus '0.699999988')."""
    float_types = (descriptor_pb2.FieldDescriptorProto.TYPE_FLOAT, descriptor_pb2.FieldDescriptorProto.TYPE_DOUBLE)

    def strip(messages):
        for message in messages:
            for field in message.field:
                field.ClearField('json_name')
                if field.type in float_types and field.HasField('default_value'):
                    field.default_value = repr(float(np.float32(field.default_value)))
            strip(message.nested_type)
    strip(file_proto.message_type)
    return file_proto


def test_checked_in_gencode_matches_the_proto_files(tmp_path):
    """The schema compiled from the .proto files equals the one embedded in the checked-in *_pb2.py files."""
    pytest.importorskip('grpc_tools')
    _, descriptor_set = _regenerate(tmp_path)
    with open(descriptor_set, 'rb') as f:
        compiled = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    assert len(compiled.file) == 5
    for file_proto in compiled.file:
        module = importlib.import_module(file_proto.name[:-len('.proto')].replace('/', '.') + '_pb2')
        embedded = descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)
        assert _normalised(embedded) == _normalised(file_proto), (f'{file_proto.name} changed; regenerate with: python -m grpc_tools.protoc '
                                        '-I. --python_out=. deeplab_axial/protos/*.proto')


def test_checked_in_gencode_is_byte_identical(tmp_path):
    """With the same protoc release as the checked-in header, regenerated files are identical byte for byte."""
    pytest.importorskip('grpc_tools')
    protos, _ = _regenerate(tmp_path)
    for proto in protos:
        name = os.path.basename(proto).replace('.proto', '_pb2.py')
        with open(os.path.join(_PROTO_DIR, name)) as f, \
                open(os.path.join(str(tmp_path), 'deeplab_axial', 'protos', name)) as g:
            ours, fresh = f.read(), g.read()
        version = [line for line in fresh.split('\n') if line.startswith('# Protobuf Python Version')]
        if version[0] not in ours:
            pytest.skip(f'installed grpc_tools generates {version[0]!r}; the schema check above still runs')
        assert ours == fresh, (f'{name} is stale; regenerate with: python -m grpc_tools.protoc -I. '
                               '--python_out=. deeplab_axial/protos/*.proto')
