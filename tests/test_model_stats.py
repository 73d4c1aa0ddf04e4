"""model_stats: multiply-adds counted from the traced graph against hand counts; the CLI's JSON."""

import json

import keras
import pytest

from deeplab_axial.model.layers.axial_attention import AxialAttention2D, _window
from deeplab_axial.tools import model_stats


def test_convolutions_and_dense_are_counted_by_hand():
    model = keras.Sequential([keras.layers.Conv2D(8, 3, padding='same'),
                              keras.layers.DepthwiseConv2D(5, padding='same'),
                              keras.layers.Conv2D(4, 3, strides=2, padding='same'),
                              keras.layers.Flatten(), keras.layers.Dense(10)])
    model.build((1, 9, 11, 3))
    got = model_stats.count_madds(model, 9, 11)
    expected = (9 * 11 * 8 * 3 * 3 * 3  # conv 3x3, 3 -> 8
                + 9 * 11 * 8 * 5 * 5  # depthwise 5x5
                + 5 * 6 * 4 * 3 * 3 * 8  # strided conv 3x3, 8 -> 4, output 5 x 6
                + 5 * 6 * 4 * 10)  # dense
    assert got == dict(madds=expected, executed_madds=expected)


def test_attention_counts_paper_keys_and_executed_blocks():
    f, height, width, span = 8, 9, 20, 5
    layer = AxialAttention2D(f, span=[None, span], block_size=8)
    layer.build((1, height, width, 3))
    got = model_stats.count_madds(lambda images, training: layer(images, training=training), height, width)
    key_depth, value_depth = f, 2 * f
    per_pair = 3 * key_depth + 2 * value_depth  # three similarities, two retrievals
    qkv = height * width * 3 * (2 * key_depth + value_depth) + height * width * value_depth * (
        2 * key_depth + value_depth)
    height_axis = width * height * height * per_pair  # global: m = 9 keys per query
    paper_width_axis = height * width * span * per_pair
    # Width 20 in 4 blocks of 5 queries (the block size up to 8 that `_block_size` takes) against 5 + 4 keys each;
    # the banded query and value terms compute one more column per query.
    block, blocks, keys = 5, 4, 5 + span - 1
    assert _window(width, span, 8, 255)['block'] == block
    executed_width_axis = height * blocks * block * (keys * (2 * key_depth + value_depth)
                                                     + (keys + 1) * (key_depth + value_depth))
    assert got['madds'] == qkv + height_axis + paper_width_axis
    assert got['executed_madds'] == qkv + height_axis + executed_width_axis


def test_a_strided_block_counts_every_query_and_executes_the_kept_ones():
    # deeplab2 attends along the height at every position, keeps every other row, attends along the width and keeps
    # every other column: the paper-comparable count. In inference the layer computes only the kept queries.
    f, height, width, span, stride = 8, 9, 20, 5, 2
    layer = AxialAttention2D(f, span=[None, span], block_size=8, strides=stride)
    layer.build((1, height, width, 3))
    got = model_stats.count_madds(lambda images, training: layer(images, training=training), height, width)
    key_depth, value_depth = f, 2 * f
    per_pair = 3 * key_depth + 2 * value_depth
    rows = -(-height // stride)  # 5 rows go on to the width axis
    qkv = height * width * 3 * (2 * key_depth + value_depth) + rows * width * value_depth * (
        2 * key_depth + value_depth)
    paper = qkv + width * height * height * per_pair + rows * width * span * per_pair
    geometry = _window(width, span, 8, 255, stride)  # 10 kept queries of the width axis, in blocks with a halo
    assert geometry['queries'] == 10 and geometry['halo'] == (span - 1) // 2
    executed = qkv + width * rows * height * per_pair + rows * geometry['blocks'] * geometry['block'] * (
        geometry['keys'] * (2 * key_depth + value_depth) + (geometry['keys'] + stride) * (key_depth + value_depth))
    assert got == dict(madds=paper, executed_madds=executed)


def test_cli_prints_params_and_madds(capsys):
    model_stats.main(['--model', 'axial_deeplab_tiny', '--input_size', '65,97', '--num_classes', '7'])
    stats = json.loads(capsys.readouterr().out)
    assert stats['model'] == 'axial_deeplab_tiny' and stats['num_classes'] == 7
    assert stats['params'] == stats['trainable_params'] + stats['non_trainable_params'] > 0
    assert stats['madds'] > 0 and stats['executed_madds'] > 0


def test_cli_rejects_a_bad_size():
    with pytest.raises(SystemExit):
        model_stats.main(['--model', 'axial_deeplab_tiny', '--input_size', '65x97'])
