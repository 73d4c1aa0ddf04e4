"""Input pipeline: augmentation geometry, padding values, determinism, multi-host sharding, label formats."""

import dataclasses
import os

import numpy as np
import PIL.Image
import PIL.ImageOps
from numpy.lib.stride_tricks import sliding_window_view
import pytest
import tensorflow as tf

from deeplab_axial import common
from deeplab_axial.data import autoaugment
from deeplab_axial.data import data_utils
from deeplab_axial.data import input_pipeline
from deeplab_axial.data import panoptic_png
from deeplab_axial.data import preprocessing

_DESCRIPTOR = dict(name='tiny', splits_to_sizes={}, num_classes=4, ignore_label=0, panoptic_label_divisor=256,
                   class_has_instances_list=[2, 3], colormap=[[0, 0, 0]] * 4, class_names=['void', 'a', 'b', 'c'])


def _label_coded_image(panoptic):
    """An image whose red channel is semantic * 60 and green channel instance * 40: geometry can be checked."""
    return np.stack([panoptic // 256 * 60, panoptic % 256 * 40, np.zeros_like(panoptic)], -1).astype(np.uint8)


def _panoptic(h=20, w=30):
    pan = np.full((h, w), 1 * 256, np.int32)
    pan[2:12, 3:14] = 2 * 256 + 1
    pan[5:18, 16:28] = 3 * 256 + 2
    pan[14:, 0:6] = 0
    return pan


def _write_records(directory, count, h=20, w=30):
    os.makedirs(directory, exist_ok=True)
    names = []
    for i in range(count):
        path = os.path.join(directory, f'train-{i:05d}-of-{count:05d}.tfrecord')
        pan = _panoptic(h, w)
        png = tf.io.encode_png(_label_coded_image(pan)).numpy()
        with tf.io.TFRecordWriter(path) as writer:
            writer.write(data_utils.create_panoptic_example(png, 'png', f'img{i}', h, w, pan)
                         .SerializeToString())
        names.append(f'img{i}')
    return names


def test_random_scale_takes_discrete_steps():
    values = {round(float(preprocessing.get_random_scale(tf.constant([i, 7]), 0.5, 1.5, 0.25)), 4)
              for i in range(200)}
    assert values == {0.5, 0.75, 1.0, 1.25, 1.5}
    uniform = [float(preprocessing.get_random_scale(tf.constant([i, 7]), 0.5, 2.0, 0.0)) for i in range(50)]
    assert all(0.5 <= v <= 2.0 for v in uniform) and len(set(uniform)) == 50
    with pytest.raises(ValueError, match='min_scale_factor'):
        preprocessing.get_random_scale(tf.constant([0, 0]), 2.0, 1.0, 0.0)


def test_pad_uses_mean_pixel_and_void_label():
    image = tf.fill([3, 4, 3], 9.0)
    label = tf.fill([3, 4], 5)
    image, label = preprocessing.pad_to_size(image, label, 5, 6, label_pad_value=255 * 1000)
    assert image.shape == (5, 6, 3)
    np.testing.assert_array_equal(image[:3, :4], 9.0)
    np.testing.assert_array_equal(image[3:], 127.5)
    np.testing.assert_array_equal(image[:, 4:], 127.5)
    np.testing.assert_array_equal(label[3:], 255000)
    np.testing.assert_array_equal(label[:3, :4], 5)


def test_train_crop_scale_flip_keep_image_and_label_aligned():
    pan = _panoptic()
    image = tf.constant(_label_coded_image(pan), tf.float32)
    flipped = 0
    for i in range(12):
        out_image, out_label = preprocessing.preprocess_panoptic_train(
            image, tf.constant(pan), tf.constant([i, 1]), crop_size=(17, 33), min_scale=0.75, max_scale=1.5,
            scale_step=0.25, label_pad_value=0)
        out_image, out_label = out_image.numpy(), out_label.numpy()
        assert out_image.shape == (17, 33, 3) and out_label.shape == (17, 33)
        valid = out_label != 0
        # Nearest-neighbour labels vs bilinear colours agree where the 5x5 neighbourhood has one label.
        windows = sliding_window_view(np.pad(out_label, 2, constant_values=-1), (5, 5))
        interior = valid & (windows.min(axis=(-2, -1)) == windows.max(axis=(-2, -1)))
        expected = _label_coded_image(out_label).astype(np.float32)
        np.testing.assert_allclose(out_image[interior][:, :2], expected[interior][:, :2], atol=1e-3)  # misaligned: >= 40
        np.testing.assert_array_equal(out_image[~valid & (out_image[..., 0] == 127.5)], 127.5)
        flipped += int(np.any(out_label[:, 0] == 3 * 256 + 2))
    assert set(np.unique(out_label)) <= set(np.unique(pan)) | {0}
    assert 0 < flipped < 12  # the right-hand instance reaches the left border only when flipped


def test_eval_rejects_images_larger_than_crop():
    with pytest.raises(tf.errors.InvalidArgumentError, match='crop_size'):
        preprocessing.preprocess_panoptic_eval(tf.zeros([10, 10, 3]), tf.zeros([10, 10], tf.int32), (9, 11), 0)


def test_training_pipeline_targets_and_determinism(tmp_path):
    _write_records(str(tmp_path), 3)
    options = input_pipeline.DataOptions(dataset=_DESCRIPTOR, file_pattern=str(tmp_path / 'train-*'),
                                         batch_size=2, crop_size=(17, 17), min_scale_factor=0.5,
                                         max_scale_factor=2.0, scale_factor_step_size=0.25,
                                         autoaugment_policy_name='simple_classification_policy', seed=5, deterministic=True)
    first = list(input_pipeline.build_dataset(options).take(3))
    second = list(input_pipeline.build_dataset(options).take(3))
    for a, b in zip(first, second):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    other = list(input_pipeline.build_dataset(dataclasses.replace(options, seed=6)).take(3))
    assert any(not np.array_equal(a[common.IMAGE], b[common.IMAGE]) for a, b in zip(first, other))
    batch = first[0]
    expected_keys = {common.IMAGE, common.GT_SEMANTIC_KEY, common.GT_PANOPTIC_KEY, common.GT_INSTANCE_CENTER_KEY,
                     common.GT_INSTANCE_REGRESSION_KEY, common.SEMANTIC_LOSS_WEIGHT_KEY,
                     common.CENTER_LOSS_WEIGHT_KEY, common.REGRESSION_LOSS_WEIGHT_KEY, common.GT_IS_CROWD}
    assert set(batch) == expected_keys
    np.testing.assert_array_equal(batch[common.GT_SEMANTIC_KEY], batch[common.GT_PANOPTIC_KEY] // 256)
    assert batch[common.GT_INSTANCE_REGRESSION_KEY].shape == (2, 17, 17, 2)


def test_input_pipelines_read_disjoint_shards(tmp_path):
    names = _write_records(str(tmp_path), 4)
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=2)
        options = input_pipeline.DataOptions(dataset=_DESCRIPTOR, file_pattern=str(tmp_path / 'train-*'),
                                             batch_size=4, crop_size=(21, 31), is_training=False)
        batches = list(input_pipeline.build_dataset(options, context))
        assert all(b[common.IMAGE].shape[0] == 2 for b in batches)  # global 4 over 2 replicas
        seen.append({n.decode() for b in batches for n in b[common.IMAGE_NAME].numpy()})
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(names)


def test_deeplab2_raw_int32_labels_are_readable():
    pan = _panoptic(4, 5)
    example = data_utils.create_panoptic_example(b'', 'png', 'x', 4, 5, None)
    feature = example.features.feature
    feature[common.KEY_ENCODED_LABEL].bytes_list.value.append(pan.tobytes())
    feature[common.KEY_LABEL_FORMAT].bytes_list.value.append(b'raw')
    feature[common.KEY_ENCODED_IMAGE].bytes_list.value[0] = tf.io.encode_png(np.zeros((4, 5, 3), np.uint8)).numpy()
    decoded = input_pipeline.decode_panoptic_example(example.SerializeToString(), 256)
    np.testing.assert_array_equal(decoded['panoptic'], pan)


def test_panoptic_png_packing_is_bit_exact_for_large_ids():
    rng = np.random.default_rng(0)
    pan = rng.integers(0, 2 ** 24, (7, 9)).astype(np.int32)
    pan[0, 0] = 255 * 1000 + 999
    np.testing.assert_array_equal(panoptic_png.decode_panoptic_png(panoptic_png.encode_panoptic_png(pan)), pan)
    with pytest.raises(ValueError, match='2\\^24'):
        panoptic_png.encode_panoptic_png(np.array([[2 ** 24]]))


def test_policy_table_decodes_deeplab2_encoding():
    """deeplab2's autoaugment_policy.py stores the policy as (operation index, probability index, magnitude) triples
    into its reduced search space and probability grid; decoding them gives our table."""
    search_space = ('AutoContrast', 'Equalize', 'Invert', 'Posterize', 'Solarize', 'Color', 'Contrast', 'Brightness',
                    'Sharpness')
    probabilities = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    encoded = [8, 2, 7, 7, 1, 10, 1, 0, 9, 6, 1, 10, 8, 1, 9, 5, 1, 9, 4, 1, 7, 1, 3, 9, 8, 1, 1, 1, 1, 7]
    triples = [(search_space[encoded[i]], probabilities[encoded[i + 1]], encoded[i + 2])
               for i in range(0, len(encoded), 3)]
    decoded = tuple(tuple(triples[i:i + 2]) for i in range(0, len(triples), 2))
    assert autoaugment.POLICIES['simple_classification_policy'] == decoded


def test_colour_operations_follow_deeplab2_semantics():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    pixels = tf.constant(image)
    values = image.astype(np.float32)  # the operations compute in float32
    # Brightness at level 2 (magnitude 10 x scale 0.2): factor 0.46, truncated.
    np.testing.assert_array_equal(autoaugment.apply_operation('Brightness', pixels, 2.0),
                                  (values * np.float32(0.46)).astype(np.uint8))
    # Solarize at level 1.4: threshold int(35.84) = 35; lower values stay, the others invert.
    np.testing.assert_array_equal(autoaugment.apply_operation('Solarize', pixels, 1.4),
                                  np.where(values < 35, values, 255 - values))
    # Contrast: the constant is 32 * 32 / 256 = 4 (deeplab2's pixel-count quirk); level 10: factor 1.9, clipped.
    np.testing.assert_array_equal(autoaugment.apply_operation('Contrast', pixels, 10.0),
                                  np.clip(4 + np.float32(1.9) * (values - 4), 0, 255).astype(np.uint8))
    # Sharpness at level 0 (factor 0.1): a blend towards the 3x3 (1, 5 centre) / 13 smoothing inside the border.
    smooth = values.copy()
    weights = np.ones((3, 3), np.float32)
    weights[1, 1] = 5
    for y in range(1, 31):
        for x in range(1, 31):
            smooth[y, x] = np.einsum('ijc,ij->c', values[y - 1:y + 2, x - 1:x + 2], weights) / 13
    smooth = np.floor(np.clip(smooth, 0, 255))
    expected = np.floor(smooth + np.float32(0.1) * (values - smooth)).astype(np.uint8)
    got = autoaugment.apply_operation('Sharpness', pixels, 0.0).numpy()
    assert np.abs(got.astype(int) - expected).max() <= 1 and (got == expected).mean() > 0.99  # float32 sums' rounding
    np.testing.assert_array_equal(got[0], image[0])  # the border is the image itself at any factor
    # Color leaves a grey image grey.
    grey = tf.constant(np.repeat(image[:, :, :1], 3, axis=2))
    np.testing.assert_array_equal(autoaugment.apply_operation('Color', grey, 1.8), grey)
    # Equalize is PIL's.
    np.testing.assert_array_equal(autoaugment.apply_operation('Equalize', pixels, 9.0),
                                  np.asarray(PIL.ImageOps.equalize(PIL.Image.fromarray(image))))
    flat = tf.fill([4, 4, 3], tf.constant(7, tf.uint8))
    np.testing.assert_array_equal(autoaugment.apply_operation('Equalize', flat, 9.0), flat)


def test_policy_names_scale_and_determinism():
    policy = autoaugment.get_policy('simple_classification_policy_magnitude_scale_0.2')
    rgb = tf.random.uniform([8, 8, 3], 0, 255, seed=1)
    out = policy(rgb, tf.constant([1, 2]))
    np.testing.assert_array_equal(out, policy(rgb, tf.constant([1, 2])))
    assert out.dtype == tf.float32 and np.array_equal(out, np.round(out))
    changed = sum(not np.array_equal(policy(rgb, tf.constant([s, 0])), np.floor(rgb)) for s in range(40))
    assert 3 <= changed <= 30  # each sub-policy fires with probability 0.2 to 0.68
    assert autoaugment.get_policy('') is None
    with pytest.raises(ValueError, match='simple_classification_policy'):
        autoaugment.get_policy('rand_augment')


def test_missing_files_and_bad_options_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match='nothing-here'):
        input_pipeline.build_dataset(input_pipeline.DataOptions(file_pattern=str(tmp_path / 'nothing-here*')))
    _write_records(str(tmp_path), 1)
    with pytest.raises(ValueError, match='crop_size'):
        input_pipeline.build_dataset(input_pipeline.DataOptions(
            dataset=_DESCRIPTOR, file_pattern=str(tmp_path / 'train-*'), crop_size=(5, 5, 5)))


def test_resize_to_range_sizes_are_hand_computed():
    size = preprocessing.resize_to_range_size
    # COCO recipe (min = max = 641, factor 32): 480x640 -> 481x641 (k * 32 + 1, long side bounded).
    np.testing.assert_array_equal(size(480, 640, 641, 641, 32), [481, 641])
    # Shorter side to 600 would make the longer 1200 > 800, so the longer side sets the scale 0.8.
    np.testing.assert_array_equal(size(1000, 500, 600, 800, 0), [800, 400])
    np.testing.assert_array_equal(size(10, 20, 15, 0, 0), [15, 30])


def test_eval_with_resize_keeps_raw_labels_and_reports_resized_size(tmp_path):
    _write_records(str(tmp_path), 1)
    options = input_pipeline.DataOptions(dataset=_DESCRIPTOR, file_pattern=str(tmp_path / 'train-*'), batch_size=1,
                                         crop_size=(41, 61), min_resize_value=40, max_resize_value=60,
                                         is_training=False)
    sample = next(iter(input_pipeline.build_dataset(options)))
    np.testing.assert_array_equal(sample[common.GT_SIZE_RESIZED][0], [40, 60])
    np.testing.assert_array_equal(sample[common.GT_PANOPTIC_RAW][0], _panoptic())
    # Nearest-neighbour upsampling by exactly 2: every label pixel doubles.
    np.testing.assert_array_equal(sample[common.GT_PANOPTIC_KEY][0, :40, :60],
                                  np.repeat(np.repeat(_panoptic(), 2, 0), 2, 1))


def test_deeplab2_semantic_only_png_labels_become_panoptic():
    semantic = np.array([[0, 1, 2], [3, 3, 1]], np.uint8)
    example = data_utils.create_panoptic_example(
        tf.io.encode_png(np.zeros((2, 3, 3), np.uint8)).numpy(), 'png', 'x', 2, 3, None)
    feature = example.features.feature
    feature[common.KEY_ENCODED_LABEL].bytes_list.value.append(tf.io.encode_png(semantic[..., None]).numpy())
    feature[common.KEY_LABEL_FORMAT].bytes_list.value.append(b'png')
    decoded = input_pipeline.decode_panoptic_example(example.SerializeToString(), 1000)
    np.testing.assert_array_equal(decoded['panoptic'], semantic.astype(np.int32) * 1000)


def test_training_without_crop_size_is_rejected(tmp_path):
    _write_records(str(tmp_path), 1)
    with pytest.raises(ValueError, match='crop_size is needed for training'):
        input_pipeline.build_dataset(input_pipeline.DataOptions(
            dataset=_DESCRIPTOR, file_pattern=str(tmp_path / 'train-*'), crop_size=None))


def _write_records_with_bad(path, bad_index, bad_example):
    """Three good records with bad_example at bad_index."""
    pan = _panoptic()
    png = tf.io.encode_png(_label_coded_image(pan)).numpy()
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(3):
            example = bad_example if i == bad_index else data_utils.create_panoptic_example(
                png, 'png', f'img{i}', 20, 30, pan)
            writer.write(example.SerializeToString())


@pytest.mark.parametrize('is_training', [True, False])
def test_a_record_that_does_not_decode_is_named_by_file_and_index(tmp_path, is_training):
    """A truncated JPEG (it decoded to 'jpeg::Uncompress failed', naming nothing) and a label of another size."""
    _write_records(str(tmp_path), 1)
    pan = _panoptic()
    jpeg = tf.io.encode_jpeg(_label_coded_image(pan)).numpy()
    truncated = data_utils.create_panoptic_example(jpeg[:len(jpeg) // 2], 'jpeg', 'cut', 20, 30, pan)
    small_label = data_utils.create_panoptic_example(jpeg, 'jpeg', 'small', 20, 30, pan)
    small_label.features.feature[common.KEY_ENCODED_LABEL].bytes_list.value[0] = (
        panoptic_png.encode_panoptic_png(pan[:19]))  # as another converter might have written it
    _write_records_with_bad(str(tmp_path / 'train-b.tfrecord'), 2, truncated)
    _write_records_with_bad(str(tmp_path / 'train-c.tfrecord'), 1, small_label)
    for name, index in (('train-b.tfrecord', 2), ('train-c.tfrecord', 1)):
        options = input_pipeline.DataOptions(dataset=_DESCRIPTOR, file_pattern=str(tmp_path / name), batch_size=1,
                                             crop_size=(21, 31), is_training=is_training, repeat=False)
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=f'Cannot decode record {index} .counted from 0. of {tmp_path / name}; '):
            list(input_pipeline.build_dataset(options))


def test_a_checkpointed_iterator_resumes_with_the_same_samples(tmp_path):
    """The trainer checkpoints its input iterator; the per-record decode check must not make that impossible."""
    _write_records(str(tmp_path), 2)
    options = input_pipeline.DataOptions(dataset=_DESCRIPTOR, file_pattern=str(tmp_path / 'train-*'), batch_size=1,
                                         crop_size=(17, 17), min_scale_factor=0.5, max_scale_factor=2.0, seed=3,
                                         deterministic=True)
    iterator = iter(input_pipeline.build_dataset(options))
    next(iterator)
    saved = tf.train.Checkpoint(iterator=iterator).write(str(tmp_path / 'ckpt' / 'iterator'))
    expected = [next(iterator) for _ in range(3)]
    restored = iter(input_pipeline.build_dataset(options))
    tf.train.Checkpoint(iterator=restored).read(saved).assert_consumed()
    for want in expected:
        got = next(restored)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
