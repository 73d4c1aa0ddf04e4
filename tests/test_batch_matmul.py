"""batch_matmul.matmul: tf.matmul's values, and gradients equal to the hand-derived ones, in every orientation."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_axial.model.layers import batch_matmul


# (a shape, b shape, transpose_b): the large-left-operand shapes of the attention core (where the gradient swaps
# its operands) and small-left ones (where it does not).
CASES = [
    ((2, 3, 7, 7), (2, 3, 7, 4), False),   # weights @ value: db = a^T dy with a the larger (swapped).
    ((2, 3, 7, 4), (2, 3, 7, 4), True),    # q @ k^T: db = dy^T a with dy the larger (swapped).
    ((5, 6, 4), (5, 4, 7), False),         # k @ r^T (pre-transposed): db = a^T dy with a the smaller.
    ((5, 6, 4), (5, 7, 4), True),          # q @ r^T.
]


@pytest.mark.parametrize('a_shape, b_shape, transpose_b', CASES)
@pytest.mark.parametrize('jit_compile', [False, True])
def test_values_and_gradients_match_the_matrix_calculus(rng, a_shape, b_shape, transpose_b, jit_compile):
    a = rng.normal(size=a_shape).astype(np.float32)
    b = rng.normal(size=b_shape).astype(np.float32)
    b_matrix = np.swapaxes(b, -1, -2) if transpose_b else b
    upstream = rng.normal(size=(a @ b_matrix).shape).astype(np.float32)

    @tf.function(jit_compile=jit_compile)
    def run(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            y = batch_matmul.matmul(a, b, transpose_b=transpose_b)
        return (y,) + tuple(tape.gradient(y, [a, b], output_gradients=tf.constant(upstream)))

    y, grad_a, grad_b = [t.numpy() for t in run(tf.constant(a), tf.constant(b))]
    np.testing.assert_allclose(y, a @ b_matrix, rtol=1e-5, atol=1e-5)
    # y = a B with B = b or b^T: dL/da = dy B^T, dL/dB = a^T dy.
    np.testing.assert_allclose(grad_a, upstream @ np.swapaxes(b_matrix, -1, -2), rtol=1e-5, atol=1e-5)
    grad_b_matrix = np.swapaxes(a, -1, -2) @ upstream
    expected_b = np.swapaxes(grad_b_matrix, -1, -2) if transpose_b else grad_b_matrix
    np.testing.assert_allclose(grad_b, expected_b, rtol=1e-5, atol=1e-5)


def test_unknown_batch_and_half_precision(rng):
    a = rng.normal(size=(3, 6, 6)).astype(np.float16)
    b = rng.normal(size=(3, 6, 2)).astype(np.float16)

    @tf.function(input_signature=[tf.TensorSpec([None, 6, 6], tf.float16), tf.TensorSpec([None, 6, 2], tf.float16)])
    def grads(a, b):
        with tf.GradientTape() as tape:
            tape.watch([a, b])
            y = batch_matmul.matmul(a, b)
        return tape.gradient(y, [a, b])

    grad_a, grad_b = grads(tf.constant(a), tf.constant(b))
    assert grad_b.dtype == tf.float16
    ones = np.ones((3, 6, 2), np.float32)
    np.testing.assert_allclose(grad_a.numpy(), ones @ np.swapaxes(b.astype(np.float32), 1, 2), rtol=1e-2)
    np.testing.assert_allclose(grad_b.numpy(), np.swapaxes(a.astype(np.float32), 1, 2) @ ones, rtol=1e-2)


def test_rejects_broadcasting_shapes():
    with pytest.raises(ValueError, match='same rank'):
        batch_matmul.matmul(tf.zeros([2, 3, 4]), tf.zeros([4, 5]))
