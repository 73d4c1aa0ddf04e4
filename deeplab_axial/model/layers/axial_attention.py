"""Position-sensitive axial attention (Wang et al., "Axial-DeepLab", ECCV 2020, Eq. 4).

    y_o = sum_p softmax_p(q_o.k_p + q_o.r^q_{p-o} + k_p.r^k_{p-o}) (v_p + r^v_{p-o})

along one axis, with 8 heads, relative tables shared by the heads, and batch normalisation on the qkv projection, on
each similarity term per (term, head) and on each retrieved output per (term, channel), as deeplab2 places it.

A local span m restricts query o to the keys p with |p - o| <= (m - 1) / 2 inside the axis, for every axis length
(the paper's region: the m positions centred on o, clipped at the borders). Attention is global, one block of all
L x L pairs, when no span is set or when every window covers the axis (L <= (m + 1) / 2). A local span is computed
in query blocks: a block of b queries attends to its b + m - 1 keys (a halo of (m - 1) / 2 each side), masked
outside each query's window and past the borders, so memory and time are O(L * (b + m)) instead of O(L^2); b is
chosen per axis length and span (`_block_size`, at most `block_size`), and an axis short enough that its L x L
pairs cost less runs as one block masked to the windows. The relative terms: the key term is contracted with a
[queries, keys, depth] slice of its table by matmuls batched over the key position; so are the query and value
terms in one block, while in local blocks with a halo these two are single matmuls with the m table rows of the
window, whose [block, m] results are shifted into (and the weights out of) the blocks' [block, keys] layout by
reading each block's values with a row length one longer or shorter (`_query_relative_banded`): contiguous slices
and pads where the batched form took strided transposes.

With a query stride s (a strided block's subsampling), inference computes only the queries at positions 0, s,
2s, ... against every key: blocks of strided queries with keys s * (b - 1) + m, bands shifted by s per row.

The core runs on groups of sequences whose logits fit in the cache (`_sequence_groups`), one op after the other
on data that stays there. The logits' batch norm never touches the [batch, heads, L, L] tensors: in training its
moments come exactly from small Gram matrices of q and k (`attention_moments`; the local content term alone is
reduced from its logits, group by group), its per-head scale multiplies q or k before the products, and its shift,
constant along each softmax row, cancels. The three scaled logits are summed before one float32 softmax.
"""

import functools
from typing import List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from deeplab_axial.model.layers import batch_matmul
from deeplab_axial.model.layers.attention_moments import (content_moments, relative_counts, relative_moments,
                                                            windowed_content_sums)
from deeplab_axial.model.layers.fused_batch_norm import FusedBatchNormalization
from deeplab_axial.model.layers.term_batch_norm import TermBatchNormalization

# Relative distances beyond +-(MAX_SPAN - 1) share the last row of the table (deeplab2 clips the same way).
MAX_SPAN = 255
# Logit added where a key lies outside a query's window; finite so that a padded query row never yields NaN.
_MASKED_LOGIT = -1e9
# Bytes of float32 logits per group of sequences in the attention core (see `_sequence_groups`).
_GROUP_BYTES = 4 << 20
# Per-block work of a local span that does not grow with the block's queries (gathering the block's keys and values
# with their halo, the small products' fixed cost), in units of one (query, key) pair's work; see `_block_size`.
_BLOCK_OVERHEAD = 8
# Prefix of the name scope around the attention core; model_stats rescales the multiply-adds of the ops inside
# from the executed (blocked) key count to the paper's m keys per query.
ATTENTION_SCOPE_PREFIX = 'attention_keys_'


def _block_size(length: int, span: int, max_block: int, stride: int = 1) -> int:
    """Queries per block of a local span m along an axis of `length`: the layout that minimises the executed
    (query, key) pairs plus each block's fixed work, blocks * keys * (b + _BLOCK_OVERHEAD), over two kinds:

    - blocks of b <= `max_block` queries, each against its b + m - 1 keys (a halo of (m - 1) / 2 each side). Small
      blocks waste fewer pairs (b = 64 and m = 65 compute 128 keys per query, 1.97x the paper's m), large ones
      repeat the halo's keys and values and the per-product overhead less often. Sizes are taken as
      ceil(length / blocks), so that the padding of the last block stays small;
    - the whole axis as one block of all its queries against its `length` keys, masked to the windows (returned
      as b = the query count; it has no halo), where its length^2 pairs are no more than blocks of `max_block` queries
      compute, so that `max_block` still bounds the memory. It wins on axes up to about twice the span (65 at
      m = 65; at 129 blocks of 26 compute 0.70x its pairs).

    With a query `stride` s only the queries at positions 0, s, 2s, ... are computed (ceil(length / s) of them, the
    counts above), and a block of b of them spans s * (b - 1) + m keys. Any layout gives the same outputs.
    """
    queries = -(-length // stride)
    cap = min(max_block, queries)
    best = None
    if queries * length <= -(-queries // cap) * cap * (stride * (cap - 1) + span):
        best = (length * (queries + _BLOCK_OVERHEAD), queries)  # one block of the whole axis
    for blocks in range(max(2, -(-queries // max_block)), queries + 1):
        block = -(-queries // blocks)
        cost = -(-queries // block) * (stride * (block - 1) + span) * (block + _BLOCK_OVERHEAD)
        if best is None or cost < best[0]:
            best = (cost, block)
    return best[1]


@functools.lru_cache(maxsize=64)
def _window(length: int, span: Optional[int], block_size: int, max_span: int, stride: int = 1) -> dict:
    """Static geometry of one attention call along an axis of `length`, for the queries at positions 0, `stride`,
    2 * `stride`, ... (all of them by default) against every key.

    Returns a dict with the query count, the block count and size (`_block_size`, at most `block_size`), the keys
    per block, the left halo, the relative-table row for each (query-in-block, key-in-block) pair, the validity mask
    [blocks, block, keys] (None when every pair is valid), the valid pairs per batch element, the paper's key count
    per query, and the per-position counts of valid pairs per used table row that give the positional terms'
    batch-norm moments (see `attention_moments`). Cached: the arrays are shared and must not be modified.
    """
    radius = None if span is None else (span - 1) // 2
    # Global only when every query's window covers the axis (length <= (span + 1) / 2); any longer axis is local,
    # including one shorter than the span, where the queries near the borders still miss the far end.
    local = radius is not None and length > radius + 1
    queries = -(-length // stride)
    if local:
        block = _block_size(length, span, block_size, stride)
        blocks = -(-queries // block)
        halo = 0 if block == queries else radius  # the whole axis as one block has every key in it
        keys = length if block == queries else stride * (block - 1) + 2 * halo + 1
        paper_keys = min(span, length)
    else:
        block, blocks, keys, halo = queries, 1, length, 0
        paper_keys = length
    query_in_block = np.arange(block)[:, None]
    key_in_block = np.arange(keys)[None, :]
    relative = key_in_block - halo - stride * query_in_block  # p - o
    table_rows = np.clip(relative, -(max_span - 1), max_span - 1) + max_span - 1
    start = (np.arange(blocks) * block)[:, None, None]  # the first query index of each block
    query = stride * (start + query_in_block[None])
    key = stride * start + key_in_block[None] - halo
    valid = np.ones((blocks, block, keys), bool)
    if local:
        valid = (np.abs(relative)[None] <= radius) & (query < length) & (key >= 0) & (key < length)
    count_rows, query_counts, key_counts = relative_counts(query, key, table_rows[None], valid, length)
    return dict(queries=queries, stride=stride, blocks=blocks, block=block, keys=keys, halo=halo,
                table_rows=table_rows.astype(np.int32), mask=valid.astype(np.float32) if local else None,
                pairs=int(valid.sum()), paper_keys=paper_keys, count_rows=count_rows, query_counts=query_counts,
                key_counts=key_counts)


# The relative terms contract each (query, key) pair with its own table row. Written as matmuls batched over the
# query (or key) position, with that position moved to the leading axis, they run about 1.5-2x faster forward +
# backward than the equivalent einsums (whose batch axis sits in the middle) under XLA and in graph mode on CPU.
# The products' operand and result layout changes are rank-3 transposes of [sequences, positions, ...]: TensorFlow's
# CPU transposes of the same data run up to 2x slower at rank 5.

def _positions_first(x: tf.Tensor) -> tf.Tensor:
    """[n, h, i, u, c] -> [u, n * h * i, c]."""
    return tf.transpose(tf.reshape(x, [-1, x.shape[3], x.shape[4]]), [1, 0, 2])


def _query_relative(query: tf.Tensor, relative: tf.Tensor) -> tf.Tensor:
    """q_o . r_{p-o}: query [n, h, i, u, d], relative [u, w, d] -> [n, h, i, u, w]."""
    y = batch_matmul.matmul(_positions_first(query), relative, transpose_b=True)  # [u, n*h*i, w]
    return tf.reshape(tf.transpose(y, [1, 0, 2]), tf.concat([tf.shape(query)[:4], [relative.shape[1]]], 0))


def _key_relative(key: tf.Tensor, relative: tf.Tensor) -> tf.Tensor:
    """k_p . r_{p-o}: key [n, h, i, w, d], relative as [w, d, u] -> [n, h, i, u, w]."""
    y = batch_matmul.matmul(_positions_first(key), relative)  # [w, n*h*i, u]
    shape = tf.concat([tf.shape(key)[:3], [relative.shape[2], key.shape[3]]], 0)
    return tf.reshape(tf.transpose(y, [1, 2, 0]), shape)


def _retrieve_relative(weights: tf.Tensor, relative: tf.Tensor) -> tf.Tensor:
    """sum_p a_op r_{p-o}: weights [n, h, i, u, w], relative [u, w, d] -> [n, i, u, h, d] (sequence layout)."""
    n = tf.shape(weights)[0]
    _, heads, blocks, queries, _ = weights.shape
    y = batch_matmul.matmul(_positions_first(weights), relative)  # [u, n*h*i, d]
    y = tf.reshape(y, [queries, n, heads, blocks, relative.shape[2]])
    return tf.transpose(y, [1, 3, 0, 2, 4])


def _attention_scope(geometry: dict, length: int, keys: int) -> str:
    """Name scope of ops that compute `keys` pairs per query of each block, for model_stats: it scales their
    multiply-adds by the paper's count over the executed one (the innermost such scope counts)."""
    executed = geometry['blocks'] * geometry['block'] * keys
    return f'{ATTENTION_SCOPE_PREFIX}{length * geometry["paper_keys"]}_of_{executed}'


def _band_scope(geometry: dict, length: int) -> str:
    """The banded relative products compute keys + stride columns per query (`_query_relative_banded`)."""
    return _attention_scope(geometry, length, geometry['keys'] + geometry['stride'])


def _query_relative_banded(query: tf.Tensor, band: tf.Tensor, keys: int) -> tf.Tensor:
    """q_o . r_{p-o} inside local windows: query [n, h, i, u, d], band [1, d, keys + s] -> [n, h, i, u, keys], for
    queries s positions apart (query stride s).

    Column j of `band` holds the table row of p - o = j - halo for j < span and zeros beyond. One matmul gives
    x[u, j] = q_u . band_j; reading each block's [u, keys + s] result as [u, keys] (a contiguous slice of the first
    u * keys values) shifts row u right by s * u, so that entry (u, w) is x[u, w - s * u]: the pair's own distance,
    and zero outside the window (the columns j >= span, or wrapped from the previous row).
    """
    _, heads, blocks, queries, depth = query.shape
    columns = band.shape[2]
    y = batch_matmul.matmul(tf.reshape(query, [1, -1, depth]), band)  # [1, n*h*i*u, keys + s]
    y = tf.slice(tf.reshape(y, [-1, queries * columns]), [0, 0], [-1, queries * keys])  # gradient: a pad
    return tf.reshape(y, [-1, heads, blocks, queries, keys])


def _retrieve_relative_banded(weights: tf.Tensor, band: tf.Tensor) -> tf.Tensor:
    """sum_p a_op r_{p-o} inside local windows: weights [n, h, i, u, keys], band [1, keys + s, d] -> [n, h, i, u, d].

    The inverse shift of `_query_relative_banded`: each block's [u, keys] weights padded by s * u values and read
    as [u, keys + s] put a[u, s * u + j] at column j, the weight of distance j - halo; the band's rows j >= span
    are zero, which drops the wrapped values there.
    """
    _, heads, blocks, queries, keys = weights.shape
    rows = band.shape[1]
    y = tf.pad(tf.reshape(weights, [-1, queries * keys]), [[0, 0], [0, queries * (rows - keys)]])
    y = batch_matmul.matmul(tf.reshape(y, [1, -1, rows]), band)  # [1, n*h*i*u, d]
    return tf.reshape(y, [-1, heads, blocks, queries, band.shape[2]])


def _sequence_groups(sequences: int, logit_bytes: int) -> int:
    """Static number of groups for `sequences` sequences of `logit_bytes` float32 logits each.

    Each group's chain of products, softmax and retrievals works on tensors of about _GROUP_BYTES, which stay in
    the core's cache from one op to the next (and under glibc's mmap threshold, so their buffers are reused instead
    of mapped and zeroed afresh): Axial-DeepLab-S's forward at 1025x2049 in half the time of two halves. At least
    two groups, so that TensorFlow's executor runs independent groups on both cores; two when one sequence alone
    exceeds the cache (global attention over long axes, where smaller groups only cost: 1.1x, 1.4x under XLA).
    """
    if logit_bytes >= _GROUP_BYTES:
        return min(sequences, 2)
    return max(min(sequences, 2), min(sequences, round(sequences * logit_bytes / _GROUP_BYTES)))


def _dynamic_sequence_groups(count: tf.Tensor, logit_bytes: int) -> Tuple[tf.Tensor, tf.Tensor]:
    """Groups and sequences per group for a dynamic `count` of sequences: as few groups as keep each group's logits
    within _GROUP_BYTES, of equal size, so that the zero padding of the last group stays below one sequence per
    group (a single group is exactly the sequences: a batch of one image pads nothing).
    """
    most = max(1, _GROUP_BYTES // logit_bytes)
    groups = (count + most - 1) // most
    divisor = tf.maximum(groups, 1)  # 0 sequences: 0 groups of 0, not a division by zero
    return groups, (count + divisor - 1) // divisor


def _by_sequence_groups(fn, tensors: List[Optional[tf.Tensor]], logit_bytes: int, num_outputs: int
                        ) -> List[tf.Tensor]:
    """Runs `fn` on groups of the leading (sequence) axis of `tensors` (None entries pass through) and joins its
    `num_outputs` outputs along that axis.

    A static sequence count gives static groups (`_sequence_groups`), split without a copy and joined by contiguous
    copies. A dynamic one (e.g. an exported model's batch) runs equal groups in a loop (`_dynamic_sequence_groups`),
    the last one zero-padded (zero queries, keys and values give finite outputs, which are dropped).
    """
    sequences = tensors[0].shape[0]
    if sequences is not None:
        groups = _sequence_groups(sequences, logit_bytes)
        bounds = [sequences * i // groups for i in range(groups + 1)]
        sizes = [b - a for a, b in zip(bounds, bounds[1:])]
        parts = zip(*(tf.split(t, sizes, 0) if t is not None else [None] * groups for t in tensors))
        return [tf.concat(joined, 0) for joined in zip(*(fn(list(part)) for part in parts))]
    count = tf.shape(tensors[0])[0]
    groups, size = _dynamic_sequence_groups(count, logit_bytes)

    def grouped(t):
        t = tf.pad(t, [[0, groups * size - count]] + [[0, 0]] * (len(t.shape) - 1))
        return tf.reshape(t, tf.concat([[groups, size], tf.shape(t)[1:]], 0))
    present = [i for i, t in enumerate(tensors) if t is not None]

    def body(group):
        full = [None] * len(tensors)
        for i, t in zip(present, group):
            full[i] = t
        return fn(full)
    outputs = tf.map_fn(body, tuple(grouped(tensors[i]) for i in present),
                        fn_output_signature=[tf.float32] * num_outputs, parallel_iterations=2)
    return [tf.reshape(o, tf.concat([[-1], tf.shape(o)[2:]], 0))[:count] for o in outputs]


@keras.saving.register_keras_serializable(package='deeplab_axial')
class AxialAttention(keras.layers.Layer):
    """Multi-head position-sensitive attention along axis 1 of a [batch, length, channels] input.

    Args:
      total_key_depth: query/key channels over all heads (Dk).
      total_value_depth: value channels over all heads (Dv); also the output channels.
      num_heads: attention heads; must divide both depths.
      span: None for global attention, else an odd local span m: each query sees the m positions centred on it,
        clipped at the borders, whatever the axis length (global in effect only when L <= (m + 1) / 2).
      query_shape: deeplab2's rule (its `query_shape`, 129 in every released model): when set, an axis of length
        <= query_shape runs global attention, whatever the span; longer axes use the span.
      max_span: the relative tables have 2 * max_span - 1 rows; larger distances reuse the last row.
      block_size: the largest query block of local attention; the layer takes the size up to it that minimises
        the executed pairs plus each block's fixed work (`_block_size`). Memory and time grow as
        length * (block + span).
      use_query_rpe_similarity: add q_o . r^q_{p-o} to the logits.
      use_key_rpe_similarity: add k_p . r^k_{p-o} to the logits.
      use_content_similarity: add q_o . k_p to the logits.
      retrieve_value_rpe: add sum_p a_op r^v_{p-o} to the output.
      retrieve_value_content: add sum_p a_op v_p to the output.
      initialization_std_for_query_key_rpe: std of the truncated-normal init of r^q and r^k.
      initialization_std_for_value_rpe: std of the truncated-normal init of r^v.
      bn_momentum: momentum of every batch norm in the layer.
      bn_epsilon: epsilon of every batch norm in the layer.
      use_sync_batchnorm: synchronise batch statistics across replicas.
      core_dtype: dtype of the attention core's products (logits and retrievals): None follows the layer's compute
        dtype; 'bfloat16' runs them in bfloat16 under a float32 policy too (CPUs with AVX-512 BF16 or AMX, GPUs,
        TPUs). The softmax and every batch-norm statistic stay float32.
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, total_key_depth: int = 512, total_value_depth: int = 1024, num_heads: int = 8,
                 span: Optional[int] = None, max_span: int = MAX_SPAN, block_size: int = 64,
                 query_shape: Optional[int] = None, use_query_rpe_similarity: bool = True,
                 use_key_rpe_similarity: bool = True,
                 use_content_similarity: bool = True, retrieve_value_rpe: bool = True,
                 retrieve_value_content: bool = True, initialization_std_for_query_key_rpe: float = 1.0,
                 initialization_std_for_value_rpe: float = 1.0, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, core_dtype: Optional[str] = None, **kwargs):
        super().__init__(**kwargs)
        if total_key_depth % num_heads or total_value_depth % num_heads:
            raise ValueError('AxialAttention: `num_heads` must divide `total_key_depth` and `total_value_depth`. '
                             f'Received: num_heads={num_heads}, total_key_depth={total_key_depth}, '
                             f'total_value_depth={total_value_depth}')
        if span is not None and (span < 1 or span % 2 == 0):
            raise ValueError(f'AxialAttention: `span` must be None (global) or a positive odd number. Received: '
                             f'span={span}')
        if not (use_query_rpe_similarity or use_key_rpe_similarity or use_content_similarity):
            raise ValueError('AxialAttention: at least one similarity term (use_query_rpe_similarity, '
                             'use_key_rpe_similarity, use_content_similarity) must be on')
        if not (retrieve_value_rpe or retrieve_value_content):
            raise ValueError('AxialAttention: at least one of retrieve_value_rpe, retrieve_value_content must be on')
        if core_dtype not in (None, 'float32', 'bfloat16', 'float16'):
            raise ValueError(f'AxialAttention: `core_dtype` must be None, \'float32\', \'bfloat16\' or \'float16\'. '
                             f'Received: core_dtype={core_dtype!r}')
        if query_shape is not None and query_shape < 1:
            raise ValueError(f'AxialAttention: `query_shape` must be None or positive. Received: '
                             f'query_shape={query_shape}')
        if block_size < 1 or max_span < 1:
            raise ValueError(f'AxialAttention: `block_size` and `max_span` must be positive. Received: '
                             f'block_size={block_size}, max_span={max_span}')
        self.total_key_depth = total_key_depth
        self.total_value_depth = total_value_depth
        self.num_heads = num_heads
        self.span = span
        self.max_span = max_span
        self.block_size = block_size
        self.query_shape = query_shape
        self.use_query_rpe_similarity = use_query_rpe_similarity
        self.use_key_rpe_similarity = use_key_rpe_similarity
        self.use_content_similarity = use_content_similarity
        self.retrieve_value_rpe = retrieve_value_rpe
        self.retrieve_value_content = retrieve_value_content
        self.initialization_std_for_query_key_rpe = initialization_std_for_query_key_rpe
        self.initialization_std_for_value_rpe = initialization_std_for_value_rpe
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.use_sync_batchnorm = use_sync_batchnorm
        self.core_dtype = core_dtype
        self._similarity_terms = [name for name, on in (('content', use_content_similarity),
                                                        ('query_rpe', use_query_rpe_similarity),
                                                        ('key_rpe', use_key_rpe_similarity)) if on]
        self._retrieval_terms = [name for name, on in (('content', retrieve_value_content),
                                                       ('value_rpe', retrieve_value_rpe)) if on]
        bn_args = dict(momentum=bn_momentum, epsilon=bn_epsilon, synchronized=use_sync_batchnorm)
        # === Layers ===
        self.batch_norm_qkv = FusedBatchNormalization(name='batch_norm_qkv', **bn_args)
        # Statistics, scale and shift of the logits and outputs stay float32 under mixed precision.
        self.batch_norm_similarity = TermBatchNormalization(
            len(self._similarity_terms), num_heads, name='batch_norm_similarity', dtype='float32', **bn_args)
        self.batch_norm_retrieved_output = TermBatchNormalization(
            len(self._retrieval_terms), total_value_depth, name='batch_norm_retrieved_output', dtype='float32',
            **bn_args)

    def build(self, input_shape: Sequence[Optional[int]]):
        channels = input_shape[-1]
        qkv_depth = 2 * self.total_key_depth + self.total_value_depth
        self.qkv_kernel = self.add_weight(
            name='qkv_kernel', shape=(channels, qkv_depth),
            initializer=keras.initializers.TruncatedNormal(stddev=channels ** -0.5))
        self.batch_norm_qkv.build((None, None, qkv_depth))
        self.batch_norm_similarity.build()
        self.batch_norm_retrieved_output.build()
        key_depth = self.total_key_depth // self.num_heads
        value_depth = self.total_value_depth // self.num_heads
        rows = 2 * self.max_span - 1
        qk_init = keras.initializers.TruncatedNormal(stddev=self.initialization_std_for_query_key_rpe)
        if self.use_query_rpe_similarity:
            self.query_rpe = self.add_weight(name='query_rpe', shape=(rows, key_depth), initializer=qk_init)
        if self.use_key_rpe_similarity:
            self.key_rpe = self.add_weight(name='key_rpe', shape=(rows, key_depth), initializer=qk_init)
        if self.retrieve_value_rpe:
            self.value_rpe = self.add_weight(
                name='value_rpe', shape=(rows, value_depth),
                initializer=keras.initializers.TruncatedNormal(stddev=self.initialization_std_for_value_rpe))
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False, query_stride: int = 1) -> tf.Tensor:
        """Attends along axis 1.

        Args:
          inputs: [batch, length, channels]; length must be static.
          training: batch statistics for every batch norm.
          query_stride: return the outputs at positions 0, s, 2s, ... only (a strided block's subsampling). In
            inference only those queries are computed; in training all are (the batch norms' statistics cover
            every query, as deeplab2's attention before its subsampling) and the output is subsampled.

        Returns:
          [batch, ceil(length / query_stride), total_value_depth] in the compute dtype.
        """
        length = inputs.shape[1]
        if length is None:
            raise ValueError(f'{self.name}: the attended axis must have a static length. Received shape '
                             f'{inputs.shape}')
        if query_stride < 1:
            raise ValueError(f'{self.name}: `query_stride` must be positive. Received: {query_stride}')
        if training and query_stride > 1:
            return self.call(inputs, training=training)[:, ::query_stride]
        global_axis = self.query_shape is not None and length <= self.query_shape
        geometry = _window(length, None if global_axis else self.span, self.block_size, self.max_span, query_stride)

        qkv = self._qkv(inputs, training)
        batch = tf.shape(qkv)[0]
        query, key, value = self._split_heads(qkv, batch, length)
        # Moments of the positional (and global content) logits from the unblocked queries and keys.
        moments = self._similarity_moments(query, key, geometry) if training else {}
        query = self._query_blocks(query, geometry)
        key = self._key_blocks(key, geometry, length)
        value = self._key_blocks(value, geometry, length)

        with tf.name_scope(_attention_scope(geometry, length, geometry['keys'])):
            output = self._attend(query, key, value, geometry, length, training, moments)
        return tf.cast(output, self.compute_dtype)

    def _qkv(self, inputs: tf.Tensor, training: bool) -> tf.Tensor:
        """The batch-normalised qkv projection, [batch, length, 2Dk + Dv] in the compute dtype.

        One 2-D matmul: on CPU it runs faster forward and backward than the equivalent 3-D einsum. In inference the
        batch norm's scale is taken into the kernel and its shift is the matmul's bias (fused into it).
        """
        x = tf.reshape(inputs, [-1, inputs.shape[-1]])
        if self.batch_norm_qkv.uses_batch_statistics(training):
            qkv = tf.matmul(x, tf.cast(self.qkv_kernel, inputs.dtype))
            qkv = tf.reshape(qkv, [tf.shape(inputs)[0], inputs.shape[1], qkv.shape[-1]])
            return tf.cast(self.batch_norm_qkv(qkv, training=training), self.compute_dtype)
        scale, shift = self.batch_norm_qkv.folded_scale_and_shift()
        # Under mixed precision the kernel reads in the compute dtype; the product is rounded to it once.
        kernel = tf.cast(tf.cast(self.qkv_kernel, tf.float32) * scale, inputs.dtype)
        qkv = tf.nn.bias_add(tf.matmul(x, kernel), tf.cast(shift, inputs.dtype))
        return tf.cast(tf.reshape(qkv, [tf.shape(inputs)[0], inputs.shape[1], qkv.shape[-1]]), self.compute_dtype)

    def _split_heads(self, qkv: tf.Tensor, batch: tf.Tensor, length: int) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """[batch, length, 2Dk + Dv] -> q, k [batch, heads, length, dk] and v [batch, heads, length, dv]."""
        query, key, value = tf.split(qkv, [self.total_key_depth, self.total_key_depth, self.total_value_depth], -1)

        def heads_first(x):
            x = tf.reshape(x, [batch, length, self.num_heads, x.shape[-1] // self.num_heads])
            return tf.transpose(x, [0, 2, 1, 3])
        return heads_first(query), heads_first(key), heads_first(value)

    @staticmethod
    def _query_blocks(x: tf.Tensor, geometry: dict) -> tf.Tensor:
        """[batch, heads, length, depth] -> [batch, heads, blocks, block, depth]: the queries at the stride,
        zero-padded at the end."""
        if geometry['stride'] > 1:
            x = x[:, :, ::geometry['stride']]
        padded = geometry['blocks'] * geometry['block']
        if padded > geometry['queries']:
            x = tf.pad(x, [[0, 0], [0, 0], [0, padded - geometry['queries']], [0, 0]])
        return tf.reshape(x, [tf.shape(x)[0], x.shape[1], geometry['blocks'], geometry['block'], x.shape[-1]])

    @staticmethod
    def _key_blocks(x: tf.Tensor, geometry: dict, length: int) -> tf.Tensor:
        """[batch, heads, length, depth] -> [batch, heads, blocks, keys, depth]: each block's keys with the halo."""
        if geometry['blocks'] == 1 and geometry['halo'] == 0:  # one block: its keys are the whole axis
            return tf.expand_dims(x, 2)
        halo, blocks, keys = geometry['halo'], geometry['blocks'], geometry['keys']
        step = geometry['stride'] * geometry['block']  # positions between the first queries of two blocks
        x = tf.pad(x, [[0, 0], [0, 0], [halo, max(0, (blocks - 1) * step + keys - halo - length)], [0, 0]])
        index = (np.arange(blocks)[:, None] * step + np.arange(keys)[None, :]).reshape(-1).astype(np.int32)
        x = tf.gather(x, index, axis=2)
        return tf.reshape(x, [tf.shape(x)[0], x.shape[1], blocks, keys, x.shape[-1]])

    def _relative(self, table: tf.Variable, geometry: dict, dtype: tf.DType) -> tf.Tensor:
        """The table rows for every (query-in-block, key-in-block) pair: [block, keys, depth]."""
        return tf.gather(tf.cast(table, dtype), geometry['table_rows'])

    def _band(self, table: tf.Variable, geometry: dict, dtype: tf.DType, transpose: bool) -> tf.Tensor:
        """The table rows of local blocks with a halo by distance, zero-padded to keys + stride: [1, keys + s, depth]
        (row j: distance j - halo), or [1, depth, keys + s] with `transpose` (`_query_relative_banded`)."""
        span = 2 * geometry['halo'] + 1
        rows = np.clip(np.arange(span) - geometry['halo'], -(self.max_span - 1), self.max_span - 1) + self.max_span - 1
        band = tf.gather(tf.cast(table, dtype), rows.astype(np.int32))
        band = tf.pad(band, [[0, geometry['keys'] + geometry['stride'] - span], [0, 0]])
        return (tf.transpose(band) if transpose else band)[None]

    def _similarity_moments(self, query: tf.Tensor, key: tf.Tensor, geometry: dict) -> dict:
        """Batch-norm moments of the similarity terms from q, k [batch, heads, length, depth] (`attention_moments`).

        Returns {term name: (mean, mean of squares)}, float32 [heads] each; the local content term is left out (its
        windowed pairs have no small-Gram form) and is reduced from the blocked logits instead.
        """
        moments = {}
        for name in self._similarity_terms:
            if name == 'content':
                if geometry['mask'] is None:
                    moments[name] = content_moments(query, key)
            elif name == 'query_rpe':
                moments[name] = relative_moments(query, self.query_rpe, geometry['count_rows'],
                                                 geometry['query_counts'], geometry['pairs'])
            else:
                moments[name] = relative_moments(key, self.key_rpe, geometry['count_rows'],
                                                 geometry['key_counts'], geometry['pairs'])
        return moments

    def _attend(self, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, geometry: dict, length: int,
                training: bool, similarity_moments: dict) -> tf.Tensor:
        """Blocked Eq. 4 with folded batch norms; returns float32 [batch, queries, total_value_depth].

        `similarity_moments` holds the training-mode moments of the similarity terms computed from the unblocked
        q and k; a term missing there is reduced from its logits.
        """
        mask = None if geometry['mask'] is None else tf.constant(geometry['mask'])
        batch = tf.cast(tf.shape(query)[0], tf.float32)

        logit_bytes = self.num_heads * geometry['blocks'] * geometry['block'] * geometry['keys'] * 4
        # The local content logits have no small-Gram moments: they are reduced group by group (a first pass over
        # the sequences, before the scale they give is known).
        if training and 'content' in self._similarity_terms and 'content' not in similarity_moments:
            sums = _by_sequence_groups(
                lambda group: list(windowed_content_sums(tf.cast(group[0], tf.float32),
                                                         tf.cast(group[1], tf.float32), mask)),
                [query, key], logit_bytes, 2)
            count = batch * geometry['pairs']
            similarity_moments['content'] = tuple(tf.reduce_sum(s, 0) / count for s in sums)
        moments = [similarity_moments[name] for name in self._similarity_terms] if training else []
        scale, similarity_shift = self.batch_norm_similarity(moments, training=training)
        # Each term's per-head scale multiplies its query- or key-side operand, not the [.., L, L] logits, so that
        # no full-size product or (in the backward pass) full-size reduction is spent on it. The summed shift is
        # the same for every key of a query: it cancels in the softmax and its exact gradient is zero, so it only
        # enters with weight 0, on the small scale tensor, which gives the shift's variables that zero gradient
        # instead of None.
        scale = scale + 0.0 * tf.reduce_sum(similarity_shift)
        dtype = tf.as_dtype(self.core_dtype) if self.core_dtype else query.dtype
        query, key, value = (tf.cast(t, dtype) for t in (query, key, value))
        scale = tf.cast(scale, dtype)[:, :, None, None, None]
        relative = {name: self._relative(getattr(self, name), geometry, dtype) for name, used in (
            ('query_rpe', self.use_query_rpe_similarity), ('key_rpe', self.use_key_rpe_similarity),
            ('value_rpe', self.retrieve_value_rpe)) if used}
        if 'key_rpe' in relative:  # In the layout of the key term's product, once for all groups.
            relative['key_rpe'] = tf.transpose(relative['key_rpe'], [1, 2, 0])
        if geometry['halo']:  # local blocks with a halo: the query and value terms by band
            for name in ('query_rpe', 'value_rpe'):
                if name in relative:
                    relative[name] = self._band(getattr(self, name), geometry, dtype, name == 'query_rpe')

        def attend(group):
            return self._attend_sequences(*group, scale, relative, mask, geometry, length)
        outputs = _by_sequence_groups(attend, [query, key, value], logit_bytes, len(self._retrieval_terms))
        return self.batch_norm_retrieved_output.normalize_sum(outputs, training=training)

    def _attend_sequences(self, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor, scale: tf.Tensor, relative: dict,
                          mask: Optional[tf.Tensor], geometry: dict, length: int) -> List[tf.Tensor]:
        """Logits, softmax and the retrieved outputs of a group of sequences, before their batch norm.

        Args:
          query, key, value: the group's blocked q [n, h, i, u, dk], k [n, h, i, w, dk], v [n, h, i, w, dv], in the
            core's dtype.
          scale: the per-(term, head) logit scales, [terms, h, 1, 1, 1].
          relative: per table name, the gathered [queries, keys, depth] slice of the table (the key table's as
            [keys, depth, queries]), or for the query and value tables of local blocks with a halo their band
            (`_band`).
          mask: the [blocks, block, keys] validity mask of a local span, else None.

        Returns:
          Per retrieval term, float32 [n, queries, total_value_depth] (the geometry's queries).
        """
        weights = self._attention_weights(query, key, scale, relative, mask, geometry, length)
        return self._retrieve(weights, value, relative, mask, geometry, length)

    def _attention_weights(self, query: tf.Tensor, key: tf.Tensor, scale: tf.Tensor, relative: dict,
                           mask: Optional[tf.Tensor], geometry: dict, length: int) -> tf.Tensor:
        """Softmax over the keys of the summed, scaled similarity terms: [n, h, i, u, w] in the core's dtype.

        The terms are summed in the core's dtype and cast once; the mask and the softmax are float32.
        """
        terms = []
        for index, name in enumerate(self._similarity_terms):
            if name == 'content':
                term = batch_matmul.matmul(scale[index] * query, key, transpose_b=True)
            elif name == 'query_rpe' and geometry['halo']:
                with tf.name_scope(_band_scope(geometry, length)):
                    term = _query_relative_banded(scale[index] * query, relative['query_rpe'], geometry['keys'])
            elif name == 'query_rpe':
                term = _query_relative(scale[index] * query, relative['query_rpe'])
            else:
                term = _key_relative(scale[index] * key, relative['key_rpe'])
            terms.append(term)
        logits = terms[0]
        for term in terms[1:]:  # Pairwise adds: graph mode turns add_n into slower accumulator ops.
            logits = logits + term
        logits = tf.cast(logits, tf.float32)
        if mask is not None:
            logits = logits + (1.0 - mask) * _MASKED_LOGIT
        return tf.cast(tf.nn.softmax(logits, axis=-1), query.dtype)

    def _retrieve(self, weights: tf.Tensor, value: tf.Tensor, relative: dict, mask: Optional[tf.Tensor],
                  geometry: dict, length: int) -> List[tf.Tensor]:
        """The retrieved outputs of `_attend_sequences` from the attention weights."""
        # Each retrieved output goes to the layer's [batch, length, (head, depth)] layout before its batch norm, so
        # that the moments, scale and shift work on the contiguous last axis and the padded queries drop out.
        outputs = []
        for name in self._retrieval_terms:
            if name == 'content':
                output = tf.transpose(batch_matmul.matmul(weights, value), [0, 2, 3, 1, 4])
            elif geometry['halo']:
                with tf.name_scope(_band_scope(geometry, length)):
                    output = _retrieve_relative_banded(weights, relative['value_rpe'])
                output = tf.transpose(output, [0, 2, 3, 1, 4])
            else:
                output = _retrieve_relative(weights, relative['value_rpe'])
            output = tf.reshape(output, [tf.shape(output)[0], geometry['blocks'] * geometry['block'],
                                         self.total_value_depth])
            if geometry['blocks'] * geometry['block'] > geometry['queries']:
                output = tf.slice(output, [0, 0, 0], [-1, geometry['queries'], -1])  # gradient: a pad
            outputs.append(tf.cast(output, tf.float32))
        return outputs

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            total_key_depth=self.total_key_depth, total_value_depth=self.total_value_depth,
            num_heads=self.num_heads, span=self.span, max_span=self.max_span, block_size=self.block_size,
            query_shape=self.query_shape, use_query_rpe_similarity=self.use_query_rpe_similarity,
            use_key_rpe_similarity=self.use_key_rpe_similarity,
            use_content_similarity=self.use_content_similarity, retrieve_value_rpe=self.retrieve_value_rpe,
            retrieve_value_content=self.retrieve_value_content,
            initialization_std_for_query_key_rpe=self.initialization_std_for_query_key_rpe,
            initialization_std_for_value_rpe=self.initialization_std_for_value_rpe,
            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, use_sync_batchnorm=self.use_sync_batchnorm,
            core_dtype=self.core_dtype)
        return config


@keras.saving.register_keras_serializable(package='deeplab_axial')
class AxialAttention2D(keras.layers.Layer):
    """Height-axis attention, optional stride, width-axis attention, optional stride; no activation between.

    Args:
      filters: attention width f; the key depth is f * key_expansion and the value depth (and output channels)
        f * value_expansion.
      key_expansion: key depth over filters.
      value_expansion: value depth over filters.
      num_heads: attention heads.
      span: None (global), an odd local span for both axes, or a (height, width) pair of those.
      strides: subsampling x[:, ::s] after the height axis and x[:, :, ::s] after the width axis (deeplab2).
      stride_by_average_pool: stride instead by an s x s average pool after the width axis, both axes attending at
        full resolution (the official PyTorch code; 'same' pooling, which equals its unpadded pool at even sizes).
      **kwargs: the other `AxialAttention` arguments (max_span, block_size, query_shape, the term switches, init
        stds, bn settings, core_dtype), then `keras.layers.Layer` arguments.
    """

    _ATTENTION_ARGS = ('max_span', 'block_size', 'query_shape', 'use_query_rpe_similarity', 'use_key_rpe_similarity',
                       'use_content_similarity', 'retrieve_value_rpe', 'retrieve_value_content',
                       'initialization_std_for_query_key_rpe', 'initialization_std_for_value_rpe', 'bn_momentum',
                       'bn_epsilon', 'use_sync_batchnorm', 'core_dtype')

    def __init__(self, filters: int = 512, key_expansion: float = 1, value_expansion: float = 2,
                 num_heads: int = 8, span: Union[None, int, Sequence[Optional[int]]] = None, strides: int = 1,
                 stride_by_average_pool: bool = False, **kwargs):
        attention_args = {name: kwargs.pop(name) for name in self._ATTENTION_ARGS if name in kwargs}
        super().__init__(**kwargs)
        if strides < 1:
            raise ValueError(f'AxialAttention2D: `strides` must be positive. Received: strides={strides}')
        self.filters = filters
        self.key_expansion = key_expansion
        self.value_expansion = value_expansion
        self.num_heads = num_heads
        self.span = list(span) if isinstance(span, (list, tuple)) else span
        self.strides = strides
        self.stride_by_average_pool = stride_by_average_pool
        self.attention_args = attention_args
        spans = self.span if isinstance(self.span, list) else [self.span, self.span]
        depths = dict(total_key_depth=int(round(filters * key_expansion)),
                      total_value_depth=int(round(filters * value_expansion)), num_heads=num_heads)
        # === Layers ===
        self.height_axis = AxialAttention(span=spans[0], name='height_axis', **depths, **attention_args)
        self.width_axis = AxialAttention(span=spans[1], name='width_axis', **depths, **attention_args)

    def build(self, input_shape: Sequence[Optional[int]]):
        if input_shape[1] is None or input_shape[2] is None:
            raise ValueError(f'{self.name}: height and width must be static. Received shape {input_shape}')
        self.height_axis.build((None, input_shape[1], input_shape[-1]))
        self.width_axis.build((None, input_shape[2], self.height_axis.total_value_depth))
        self.built = True

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        """[batch, height, width, channels] -> [batch, ceil(height/s), ceil(width/s), filters * value_expansion]."""
        batch = tf.shape(inputs)[0]
        height, width = inputs.shape[1], inputs.shape[2]
        # Subsampling keeps the outputs at every s-th position of each axis: the attention returns those only
        # (in inference it computes no other query).
        stride = self.strides if self.strides > 1 and not self.stride_by_average_pool else 1
        x = tf.reshape(tf.transpose(inputs, [0, 2, 1, 3]), [-1, height, inputs.shape[-1]])
        x = self.height_axis(x, training=training, query_stride=stride)
        height = x.shape[1]
        x = tf.transpose(tf.reshape(x, [batch, width, height, x.shape[-1]]), [0, 2, 1, 3])
        x = tf.reshape(x, [-1, width, x.shape[-1]])
        x = self.width_axis(x, training=training, query_stride=stride)
        x = tf.reshape(x, [batch, height, x.shape[1], x.shape[-1]])
        if self.strides > 1 and self.stride_by_average_pool:
            x = tf.nn.avg_pool2d(x, self.strides, self.strides, 'SAME')
        return x

    def compute_output_shape(self, input_shape: Sequence[Optional[int]]) -> Tuple[Optional[int], ...]:
        def strided(size):
            return None if size is None else -(-size // self.strides)
        return (input_shape[0], strided(input_shape[1]), strided(input_shape[2]),
                int(round(self.filters * self.value_expansion)))

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, key_expansion=self.key_expansion, value_expansion=self.value_expansion,
                      num_heads=self.num_heads, span=self.span, strides=self.strides,
                      stride_by_average_pool=self.stride_by_average_pool, **self.attention_args)
        return config
