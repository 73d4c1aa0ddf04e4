"""Parameters and multiply-adds of a registered model, counted from its built variables and traced graph.

    python -m deeplab_axial.tools.model_stats --model axial_deeplab_l --input_size 1025,2049 --num_classes 19

prints one JSON object. Multiply-adds come from the static shapes of the MatMul, BatchMatMul, Einsum, Conv2D and
DepthwiseConv2dNative ops of the graph traced for one [1, H, W, 3] input (tracing only; nothing runs). Batch norm,
softmax, resizing and elementwise ops are not counted, as in the paper's M-Adds.

Local attention: the layer computes query blocks of b queries against b + m - 1 keys and masks the pairs outside
each window, so it executes more multiply-adds than the paper's convention of m keys for every query (L * m per
axis, borders included). `madds` reports the paper-comparable count: ops inside an attention core (name scope
`attention_keys_{L*m}_of_{executed pairs}`, the innermost one where they nest) are scaled by L * m / executed
pairs. A strided block's attention counts every query, as deeplab2 computes them before subsampling, while in
inference the layer computes only the queries it keeps. `executed_madds` is the count of what actually runs (more
than `madds` where local blocks compute masked pairs, fewer where strided blocks skip queries). For unstrided global
attention the two agree.
"""

import argparse
import json
import os
import re
import string
from typing import Dict, Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplab_axial.model import registry  # noqa: E402
from deeplab_axial.model.layers.axial_attention import ATTENTION_SCOPE_PREFIX  # noqa: E402

_SCOPE = re.compile(ATTENTION_SCOPE_PREFIX + r'(\d+)_of_(\d+)(?:_\d+)?/')  # a repeated scope gets a suffix


def count_params(model: keras.Model) -> Dict[str, int]:
    """Trainable, non-trainable and total parameter counts of a built model."""
    trainable = sum(int(np.prod(v.shape)) for v in model.trainable_weights)
    non_trainable = sum(int(np.prod(v.shape)) for v in model.non_trainable_weights)
    return dict(params=trainable + non_trainable, trainable_params=trainable, non_trainable_params=non_trainable)


def op_madds(op: tf.Operation) -> int:
    """Multiply-adds of one graph op from its static shapes (0 for ops that are not products)."""
    def shape(tensor):
        dims = tensor.shape.as_list()
        if any(d is None for d in dims):
            raise ValueError(f'model_stats: op {op.name} has a dynamic shape {dims}; trace with static shapes')
        return dims

    if op.type == 'MatMul':
        a = shape(op.inputs[0])
        k = a[0] if op.get_attr('transpose_a') else a[1]
        return int(np.prod(shape(op.outputs[0]))) * k
    if op.type in ('BatchMatMul', 'BatchMatMulV2', 'BatchMatMulV3'):
        a = shape(op.inputs[0])
        k = a[-2] if op.get_attr('adj_x') else a[-1]
        return int(np.prod(shape(op.outputs[0]))) * k
    if op.type == 'Einsum':
        equation = op.get_attr('equation').decode()
        inputs, _ = equation.split('->')
        sizes = {}
        for letters, tensor in zip(inputs.split(','), op.inputs):
            if '.' in letters:
                raise ValueError(f'model_stats: ellipsis einsum {equation!r} in {op.name} is not supported')
            sizes.update(zip(letters, shape(tensor)))
        return int(np.prod([sizes[c] for c in sizes if c in string.ascii_letters]))
    if op.type == 'Conv2D':
        kh, kw, cin, _ = shape(op.inputs[1])
        return int(np.prod(shape(op.outputs[0]))) * kh * kw * cin
    if op.type == 'DepthwiseConv2dNative':
        kh, kw, _, _ = shape(op.inputs[1])
        return int(np.prod(shape(op.outputs[0]))) * kh * kw
    return 0


def count_madds(model: keras.Model, height: int, width: int) -> Dict[str, int]:
    """Paper-comparable and executed multiply-adds of one forward pass on a [1, height, width, 3] input."""
    function = tf.function(lambda images: model(images, training=False))
    graph = function.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32)).graph
    paper, executed = 0.0, 0
    for op in graph.get_operations():
        madds = op_madds(op)
        if not madds:
            continue
        executed += madds
        scopes = _SCOPE.findall(op.name)  # the innermost scope counts
        paper += madds * int(scopes[-1][0]) / int(scopes[-1][1]) if scopes else madds
    return dict(madds=int(round(paper)), executed_madds=executed)


def model_stats(name: str, height: int, width: int, num_classes: int = None) -> dict:
    """Builds the named model and returns its parameter and multiply-add counts at [height, width]."""
    overrides = {} if num_classes is None else dict(num_classes=num_classes)
    model = registry.build_model(name, **overrides)
    model.build((1, height, width, 3))
    stats = dict(model=name, input_size=[height, width], num_classes=model.num_classes)
    stats.update(count_params(model))
    stats.update(count_madds(model, height, width))
    return stats


def _size(text: str) -> Sequence[int]:
    parts = text.split(',')
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f'--input_size must be H,W (two positive integers). Received: {text!r}')
    return [int(p) for p in parts]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help=f'one of: {", ".join(registry.model_names())}')
    parser.add_argument('--input_size', required=True, type=_size, help='H,W of the input image')
    parser.add_argument('--num_classes', type=int, default=None, help='override the model\'s class count')
    args = parser.parse_args(argv)
    print(json.dumps(model_stats(args.model, *args.input_size, num_classes=args.num_classes)))


if __name__ == '__main__':
    main()
