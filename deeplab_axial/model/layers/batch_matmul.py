"""Batched matmul whose gradient products never transpose the larger operand.

The gradient of y = a @ b with respect to b is a^T @ dy. TensorFlow computes it as `matmul(a, dy, adjoint_a=True)`;
on CPU, oneDNN packs the transposed operand first, and when that operand is the large one (the [L, L] attention
weights or logit gradients against [L, depth] queries, keys or values) the product runs about twice as slow as the
same product with the small operand transposed, (dy^T @ a)^T, whose result is small and cheap to transpose. This
matmul computes its gradients that way; its forward pass is `tf.matmul`.
"""

import tensorflow as tf


def _transposed_product(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """x^T @ y over the last two axes, transposing whichever of x and y has more columns."""
    if x.shape[-1] is not None and y.shape[-1] is not None and x.shape[-1] > y.shape[-1]:
        return tf.linalg.matrix_transpose(tf.matmul(y, x, transpose_a=True))
    return tf.matmul(x, y, transpose_a=True)


def matmul(a: tf.Tensor, b: tf.Tensor, transpose_b: bool = False) -> tf.Tensor:
    """`tf.matmul(a, b, transpose_b=transpose_b)` for a, b of the same rank and batch shape (no broadcasting)."""
    if len(a.shape) != len(b.shape) or len(a.shape) < 3:
        raise ValueError(f'batch_matmul.matmul: a and b must have the same rank (at least 3). Received shapes '
                         f'{a.shape} and {b.shape}')

    @tf.custom_gradient
    def product(a, b):
        def grad(dy):
            if transpose_b:  # y = a @ b^T: da = dy @ b, db = dy^T @ a.
                return tf.matmul(dy, b), _transposed_product(dy, a)
            return tf.matmul(dy, b, transpose_b=True), _transposed_product(a, dy)
        return tf.matmul(a, b, transpose_b=transpose_b), grad
    return product(a, b)
