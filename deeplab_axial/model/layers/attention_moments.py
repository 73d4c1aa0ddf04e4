"""Exact batch-norm moments of the attention logits from small Gram matrices instead of the [B, heads, L, L] terms.

In training, each similarity term S_op needs its mean and mean of squares per head over the batch and the valid
(query o, key p) pairs. Reducing the full logit tensors (and back-propagating through those reductions) costs as much
as the logits themselves; the same two numbers follow from d x d products of the queries and keys:

- Content, q_o . k_p over all pairs:
    sum_{o,p} q_o . k_p = (sum_o q_o) . (sum_p k_p),
    sum_{o,p} (q_o . k_p)^2 = sum_{o,p} q_o^T (k_p k_p^T) q_o = sum_{ab} (Q^T Q)_ab (K^T K)_ab,
  with Q, K the [L, d] matrices of one (batch element, head).
- Positional, x_s . r_{row(o,p)} with x = q at s = o (query term) or x = k at s = p (key term): group the valid
  pairs by the position s and the table row j. With c_sj the (static) number of valid pairs at s that use row j,
    sum = sum_s x_s . R_s,             R_s = sum_j c_sj r_j,
    sum of squares = sum_s x_s^T M_s x_s = sum_{s,ab} (x_s x_s^T)_ab (M_s)_ab,   M_s = sum_j c_sj r_j r_j^T.
  The counts carry the local-span windows, the border clipping and the table-row clipping at max_span; R and M are
  shared by the batch and the heads, and x_s x_s^T is summed over the batch first.
"""

from typing import Tuple

import numpy as np
import tensorflow as tf


def relative_counts(query_position: np.ndarray, key_position: np.ndarray, table_rows: np.ndarray,
                    valid: np.ndarray, length: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-position counts of the valid (query, key) pairs that use each relative-table row.

    Args:
      query_position, key_position, table_rows, valid: broadcastable integer / bool arrays over the pairs the layer
        computes (e.g. [blocks, block, keys]); `valid` marks the pairs that enter the attention.
      length: the axis length (positions 0..length - 1).

    Returns:
      rows: the table rows used by some valid pair, [rows].
      query_counts: [length, rows] float32, pairs with query o using rows[j].
      key_counts: [length, rows] float32, pairs with key p using rows[j].
    """
    query_position, key_position, table_rows, valid = np.broadcast_arrays(
        query_position, key_position, table_rows, valid)
    queries, keys, used = query_position[valid], key_position[valid], table_rows[valid]
    rows, index = np.unique(used, return_inverse=True)

    def counts(position):
        flat = np.bincount(position * rows.size + index, minlength=length * rows.size)
        return flat.reshape(length, rows.size).astype(np.float32)
    return rows.astype(np.int32), counts(queries), counts(keys)


def content_moments(query: tf.Tensor, key: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(mean, mean of squares) per head of q_o . k_p over the batch and all L x L pairs.

    Args:
      query, key: [batch, heads, length, depth].

    Returns:
      Two float32 [heads] tensors.
    """
    query, key = tf.cast(query, tf.float32), tf.cast(key, tf.float32)
    count = tf.cast(tf.shape(query)[0], tf.float32) * float(query.shape[2] * key.shape[2])
    total, squares = _content_sums(query, key)
    return total / count, squares / count


@tf.custom_gradient
def _content_sums(query: tf.Tensor, key: tf.Tensor):
    """Per head, sum_{n,o,p} q_o . k_p and sum_{n,o,p} (q_o . k_p)^2 from [batch, heads, length, depth] q and k.

    The gradient is written out: d/dq_o = c1 K_sum + 2 c2 (K^T K) q_o, one product and one broadcast add, where
    automatic differentiation spends two products, a tile of the sum's gradient and two additions on each operand.
    """
    query_sum, key_sum = tf.reduce_sum(query, 2), tf.reduce_sum(key, 2)  # [batch, heads, depth]
    query_gram = tf.matmul(query, query, transpose_a=True)  # [batch, heads, depth, depth]
    key_gram = tf.matmul(key, key, transpose_a=True)
    total = tf.reduce_sum(query_sum * key_sum, [0, 2])
    squares = tf.reduce_sum(query_gram * key_gram, [0, 2, 3])

    def grad(d_total, d_squares):
        d_total, d_squares = d_total[None, :, None], 2.0 * d_squares[None, :, None, None]

        def operand_grad(x, other_sum, other_gram):
            return tf.matmul(x, d_squares * other_gram) + (d_total * other_sum)[:, :, None, :]
        return operand_grad(query, key_sum, key_gram), operand_grad(key, query_sum, query_gram)
    return (total, squares), grad


def relative_moments(x: tf.Tensor, table: tf.Tensor, rows: np.ndarray, counts: np.ndarray,
                     pairs: float) -> Tuple[tf.Tensor, tf.Tensor]:
    """(mean, mean of squares) per head of x_s . r_{row(o,p)} over the batch and the valid pairs.

    Args:
      x: queries (query term) or keys (key term), [batch, heads, length, depth].
      table: the relative table, [table rows, depth].
      rows: the used table rows, [rows] (from `relative_counts`).
      counts: [length, rows] pairs per position and used row (`query_counts` or `key_counts`).
      pairs: valid pairs per batch element (the sum of `counts`).

    Returns:
      Two float32 [heads] tensors.
    """
    x = tf.cast(x, tf.float32)
    depth = x.shape[-1]
    used = tf.gather(tf.cast(table, tf.float32), rows)  # [rows, depth]
    counts = tf.constant(counts)
    first = tf.matmul(counts, used)  # R_s: [length, depth]
    outer = tf.reshape(used[:, :, None] * used[:, None, :], [-1, depth * depth])
    second = tf.reshape(tf.matmul(counts, outer), [-1, depth, depth])  # M_s: [length, depth, depth]
    count = tf.cast(tf.shape(x)[0], tf.float32) * float(pairs)
    # Per (head, position), the batch as the last axis: sum_n x x^T is then a [depth, batch] x [batch, depth] product.
    total, squares = _relative_sums(tf.transpose(x, [1, 2, 3, 0]), first, second)
    return total / count, squares / count


@tf.custom_gradient
def _relative_sums(x: tf.Tensor, first: tf.Tensor, second: tf.Tensor):
    """Per head, sum_{n,s} x_s . R_s and sum_{n,s} x_s^T M_s x_s from x [heads, length, depth, batch].

    The gradient is written out: d/dx_s = c1 R_s + 2 c2 M_s x_s (M_s is symmetric), one product and one broadcast
    add, where automatic differentiation spends two products, a tile of the sum's gradient and two additions.
    """
    x_sum = tf.reduce_sum(x, -1)  # [heads, length, depth]
    gram = tf.matmul(x, x, transpose_b=True)  # [heads, length, depth, depth]
    total = tf.reduce_sum(x_sum * first, [1, 2])
    squares = tf.reduce_sum(gram * second, [1, 2, 3])

    def grad(d_total, d_squares):
        d_x = (tf.matmul(2.0 * d_squares[:, None, None, None] * second, x)
               + d_total[:, None, None, None] * first[None, :, :, None])
        d_first = tf.tensordot(d_total, x_sum, 1)
        d_second = tf.tensordot(d_squares, gram, 1)
        return d_x, d_first, d_second
    return (total, squares), grad


@tf.custom_gradient
def windowed_content_sums(query: tf.Tensor, key: tf.Tensor, mask: tf.Tensor):
    """Per (sequence, head) sum and sum of squares of q_o . k_p over the valid pairs of a local span's blocks.

    The windowed pairs have no small-Gram form, so the logits are formed, reduced and dropped; the gradient forms
    them again (d/dx of the two sums is mask * (c1 + 2 c2 x)) instead of keeping them for the backward pass. Called
    on a group of sequences at a time, the logits never leave the cache.

    Args:
      query: [n, heads, blocks, block, depth] float32.
      key: [n, heads, blocks, keys, depth] float32.
      mask: [blocks, block, keys] float32, 1 for the pairs inside the window.

    Returns:
      Two float32 [n, heads] tensors.
    """
    logits = tf.matmul(query, key, transpose_b=True) * mask
    total = tf.reduce_sum(logits, [2, 3, 4])
    squares = tf.reduce_sum(tf.square(logits), [2, 3, 4])

    def grad(d_total, d_squares):
        logits = tf.matmul(query, key, transpose_b=True)
        d_logits = mask * (d_total[:, :, None, None, None] + 2.0 * d_squares[:, :, None, None, None] * logits)
        d_query = tf.matmul(d_logits, key)
        d_key = tf.linalg.matrix_transpose(tf.matmul(query, d_logits, transpose_a=True))
        return d_query, d_key, None
    return (total, squares), grad
