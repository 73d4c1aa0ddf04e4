"""ConvBN's depthwise path: outputs and both gradients against TensorFlow's depthwise convolution and its gradient."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.model.layers.convolutions import ConvBN, depthwise_conv2d_same


@pytest.mark.parametrize('kernel_size, batch', [(5, 2), (3, 1), (4, 3)])  # 4: 'SAME' pads 1 before, 2 after
def test_depthwise_conv_and_its_gradients_match_tensorflow(rng, kernel_size, batch):
    x = tf.constant(rng.normal(size=(batch, 9, 7, 6)), tf.float64)
    kernel = tf.constant(rng.normal(size=(kernel_size, kernel_size, 6, 1)), tf.float64)
    upstream = rng.normal(size=(batch, 9, 7, 6))
    results = []
    for fn in (lambda a, k: tf.nn.depthwise_conv2d(a, k, [1, 1, 1, 1], 'SAME'), depthwise_conv2d_same):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            y = fn(x, kernel)
        results.append([y.numpy()] + [g.numpy() for g in tape.gradient(y, [x, kernel], upstream)])
    for got, expected in zip(*results):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_conv_bn_depthwise_keeps_its_variables_and_strided_path(rng):
    layer = ConvBN(None, 5, depthwise=True, name='dw')
    x = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
    y = layer(x)
    assert [v.path for v in layer.weights] == ['dw/depthwise_conv/kernel', 'dw/batch_norm/gamma', 'dw/batch_norm/beta',
                                               'dw/batch_norm/moving_mean', 'dw/batch_norm/moving_variance']
    kernel = layer.conv.kernel.numpy()
    expected = tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], 'SAME') / np.sqrt(1 + 1e-3)
    np.testing.assert_allclose(y.numpy(), np.maximum(expected.numpy(), 0), rtol=1e-5, atol=1e-5)
    strided = ConvBN(None, 3, strides=2, depthwise=True)  # falls back to Keras' own convolution
    assert strided(x).shape == (2, 4, 4, 3)
