"""Position-sensitive axial attention (Wang et al., "Axial-DeepLab", ECCV 2020, Eq. 4).

    y_o = sum_p softmax_p(q_o.k_p + q_o.r^q_{p-o} + k_p.r^k_{p-o}) (v_p + r^v_{p-o})

along one axis, with 8 heads, relative tables shared by the heads, and batch normalisation on the qkv projection, on
each similarity term per (term, head) and on each retrieved output per (term, channel), as deeplab2 places it.

A local span m restricts query o to the keys p with |p - o| <= (m - 1) / 2 inside the axis, for every axis length
(the paper's region: the m positions centred on o, clipped at the borders). Attention is global, one block of all
L x L pairs, when no span is set or when every window covers the axis (L <= (m + 1) / 2). A local span is computed
in query blocks: a block of `block_size` queries attends to its block_size + m - 1 keys (a halo of (m - 1) / 2 each
side), masked outside each query's window and past the borders, so memory and time are O(L * (block_size + m))
instead of O(L^2); an axis short enough that its L x L pairs are fewer runs as one block masked to the windows.
The relative tables are gathered once per call into a [queries, keys, depth] slice shared by every block, batch
element and head, and contracted by matmuls batched over the query (or key) position.

The logits' batch norm never touches the [batch, heads, L, L] tensors: in training its moments come exactly from
small Gram matrices of q and k (`attention_moments`; the local content term alone is reduced directly), its
per-head scale multiplies q or k before the products, and its shift, constant along each softmax row, cancels. The
three scaled logits are summed before one float32 softmax.
"""

import functools
from typing import List, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from deeplab_axial.model.layers import batch_matmul
from deeplab_axial.model.layers.attention_moments import content_moments, relative_counts, relative_moments
from deeplab_axial.model.layers.fused_batch_norm import FusedBatchNormalization
from deeplab_axial.model.layers.term_batch_norm import TermBatchNormalization, masked_moments

# Relative distances beyond +-(MAX_SPAN - 1) share the last row of the table (deeplab2 clips the same way).
MAX_SPAN = 255
# Logit added where a key lies outside a query's window; finite so that a padded query row never yields NaN.
_MASKED_LOGIT = -1e9
# Independent groups of sequences in the attention core (see `AxialAttention._attend`).
_SEQUENCE_GROUPS = 2
# Prefix of the name scope around the attention core; model_stats rescales the multiply-adds of the ops inside
# from the executed (blocked) key count to the paper's m keys per query.
ATTENTION_SCOPE_PREFIX = 'attention_keys_'


@functools.lru_cache(maxsize=64)
def _window(length: int, span: Optional[int], block_size: int, max_span: int) -> dict:
    """Static geometry of one attention call along an axis of `length`.

    Returns a dict with the block count and size, the keys per block, the left halo, the relative-table row for each
    (query-in-block, key-in-block) pair, the validity mask [blocks, block, keys] (None when every pair is valid),
    the valid pairs per batch element, the paper's key count per query, and the per-position counts of valid pairs
    per used table row that give the positional terms' batch-norm moments (see `attention_moments`). Cached: the
    arrays are shared and must not be modified.
    """
    radius = None if span is None else (span - 1) // 2
    # Global only when every query's window covers the axis (length <= (span + 1) / 2); any longer axis is local,
    # including one shorter than the span, where the queries near the borders still miss the far end.
    local = radius is not None and length > radius + 1
    if local:
        block = min(block_size, length)
        blocks = -(-length // block)
        keys = block + 2 * radius
        halo = radius
        if length * length <= blocks * block * keys:
            # One block of the whole axis, masked to the windows, computes fewer pairs (an axis up to about
            # block_size + span long).
            block, blocks, keys, halo = length, 1, length, 0
        paper_keys = min(span, length)
    else:
        block, blocks, keys, halo = length, 1, length, 0
        paper_keys = length
    query_in_block = np.arange(block)[:, None]
    key_in_block = np.arange(keys)[None, :]
    relative = key_in_block - halo - query_in_block  # p - o
    table_rows = np.clip(relative, -(max_span - 1), max_span - 1) + max_span - 1
    start = (np.arange(blocks) * block)[:, None, None]
    query = start + query_in_block[None]
    key = start + key_in_block[None] - halo
    valid = np.ones((blocks, block, keys), bool)
    if local:
        valid = (np.abs(relative)[None] <= radius) & (query < length) & (key >= 0) & (key < length)
    count_rows, query_counts, key_counts = relative_counts(query, key, table_rows[None], valid, length)
    return dict(blocks=blocks, block=block, keys=keys, halo=halo, table_rows=table_rows.astype(np.int32),
                mask=valid.astype(np.float32) if local else None, pairs=int(valid.sum()), paper_keys=paper_keys,
                count_rows=count_rows, query_counts=query_counts, key_counts=key_counts)


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
      block_size: queries per block for local attention (memory and time grow as length * (block_size + span)).
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
      **kwargs: forwarded to `keras.layers.Layer`.
    """

    def __init__(self, total_key_depth: int = 512, total_value_depth: int = 1024, num_heads: int = 8,
                 span: Optional[int] = None, max_span: int = MAX_SPAN, block_size: int = 64,
                 query_shape: Optional[int] = None, use_query_rpe_similarity: bool = True,
                 use_key_rpe_similarity: bool = True,
                 use_content_similarity: bool = True, retrieve_value_rpe: bool = True,
                 retrieve_value_content: bool = True, initialization_std_for_query_key_rpe: float = 1.0,
                 initialization_std_for_value_rpe: float = 1.0, bn_momentum: float = 0.99, bn_epsilon: float = 1e-3,
                 use_sync_batchnorm: bool = False, **kwargs):
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

    def call(self, inputs: tf.Tensor, training: bool = False) -> tf.Tensor:
        """Attends along axis 1.

        Args:
          inputs: [batch, length, channels]; length must be static.
          training: batch statistics for every batch norm.

        Returns:
          [batch, length, total_value_depth] in the compute dtype.
        """
        length = inputs.shape[1]
        if length is None:
            raise ValueError(f'{self.name}: the attended axis must have a static length. Received shape '
                             f'{inputs.shape}')
        global_axis = self.query_shape is not None and length <= self.query_shape
        geometry = _window(length, None if global_axis else self.span, self.block_size, self.max_span)

        # One 2-D matmul: on CPU it runs faster forward and backward than the equivalent 3-D einsum.
        qkv = tf.matmul(tf.reshape(inputs, [-1, inputs.shape[-1]]), tf.cast(self.qkv_kernel, inputs.dtype))
        qkv = tf.reshape(qkv, [tf.shape(inputs)[0], length, qkv.shape[-1]])
        qkv = tf.cast(self.batch_norm_qkv(qkv, training=training), self.compute_dtype)
        batch = tf.shape(qkv)[0]
        query, key, value = self._split_heads(qkv, batch, length)
        # Moments of the positional (and global content) logits from the unblocked queries and keys.
        moments = self._similarity_moments(query, key, geometry) if training else {}
        query = self._query_blocks(query, geometry, length)
        key = self._key_blocks(key, geometry, length)
        value = self._key_blocks(value, geometry, length)

        scope = f'{ATTENTION_SCOPE_PREFIX}{length * geometry["paper_keys"]}_of_' \
                f'{geometry["blocks"] * geometry["block"] * geometry["keys"]}'
        with tf.name_scope(scope):
            output = self._attend(query, key, value, geometry, length, training, moments)
        return tf.cast(output, self.compute_dtype)

    def _split_heads(self, qkv: tf.Tensor, batch: tf.Tensor, length: int) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """[batch, length, 2Dk + Dv] -> q, k [batch, heads, length, dk] and v [batch, heads, length, dv]."""
        query, key, value = tf.split(qkv, [self.total_key_depth, self.total_key_depth, self.total_value_depth], -1)

        def heads_first(x):
            x = tf.reshape(x, [batch, length, self.num_heads, x.shape[-1] // self.num_heads])
            return tf.transpose(x, [0, 2, 1, 3])
        return heads_first(query), heads_first(key), heads_first(value)

    @staticmethod
    def _query_blocks(x: tf.Tensor, geometry: dict, length: int) -> tf.Tensor:
        """[batch, heads, length, depth] -> [batch, heads, blocks, block, depth], zero-padded at the end."""
        padded = geometry['blocks'] * geometry['block']
        if padded > length:
            x = tf.pad(x, [[0, 0], [0, 0], [0, padded - length], [0, 0]])
        return tf.reshape(x, [tf.shape(x)[0], x.shape[1], geometry['blocks'], geometry['block'], x.shape[-1]])

    @staticmethod
    def _key_blocks(x: tf.Tensor, geometry: dict, length: int) -> tf.Tensor:
        """[batch, heads, length, depth] -> [batch, heads, blocks, keys, depth]: each block's keys with the halo."""
        if geometry['blocks'] == 1 and geometry['halo'] == 0:  # one block: its keys are the whole axis
            return tf.expand_dims(x, 2)
        halo, block, blocks, keys = geometry['halo'], geometry['block'], geometry['blocks'], geometry['keys']
        x = tf.pad(x, [[0, 0], [0, 0], [halo, blocks * block - length + halo], [0, 0]])
        index = (np.arange(blocks)[:, None] * block + np.arange(keys)[None, :]).reshape(-1).astype(np.int32)
        x = tf.gather(x, index, axis=2)
        return tf.reshape(x, [tf.shape(x)[0], x.shape[1], blocks, keys, x.shape[-1]])

    def _relative(self, table: tf.Variable, geometry: dict, dtype: tf.DType) -> tf.Tensor:
        """The table rows for every (query-in-block, key-in-block) pair: [block, keys, depth]."""
        return tf.gather(tf.cast(table, dtype), geometry['table_rows'])

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
        """Blocked Eq. 4 with folded batch norms; returns float32 [batch, length, total_value_depth].

        `similarity_moments` holds the training-mode moments of the similarity terms computed from the unblocked
        q and k; a term missing there is reduced from its logits.
        """
        dtype = query.dtype
        mask = None if geometry['mask'] is None else tf.constant(geometry['mask'])
        batch = tf.cast(tf.shape(query)[0], tf.float32)

        # The local content logits have no small-Gram moments: reduce them directly (and reuse them below).
        content_logits = None
        if training and 'content' in self._similarity_terms and 'content' not in similarity_moments:
            content_logits = tf.cast(batch_matmul.matmul(query, key, transpose_b=True), tf.float32)
            similarity_moments['content'] = masked_moments(content_logits, [0, 2, 3, 4], mask,
                                                           batch * geometry['pairs'])
        moments = [similarity_moments[name] for name in self._similarity_terms] if training else []
        scale, similarity_shift = self.batch_norm_similarity(moments, training=training)
        # Each term's per-head scale multiplies its query- or key-side operand, not the [.., L, L] logits, so that
        # no full-size product or (in the backward pass) full-size reduction is spent on it. The summed shift is
        # the same for every key of a query: it cancels in the softmax and its exact gradient is zero, so it only
        # enters with weight 0, on the small scale tensor, which gives the shift's variables that zero gradient
        # instead of None.
        scale = scale + 0.0 * tf.reduce_sum(similarity_shift)
        scale = tf.cast(scale, dtype)[:, :, None, None, None]
        # The sequences run as independent groups (halves of the leading axis): on CPU, TensorFlow's executor then
        # runs the groups' small products side by side, about 5% faster forward + backward at 56x56 than one pass
        # whose every op is split across cores. Splitting the leading axis takes no copy and the halves' outputs
        # join by contiguous copies (groups of heads, tried before, cost strided ones, 1-2% slower). More groups
        # are slower; under XLA it makes no difference.
        sequences = tf.shape(query)[0]
        sizes = tf.stack([(sequences * (i + 1)) // _SEQUENCE_GROUPS - (sequences * i) // _SEQUENCE_GROUPS
                          for i in range(_SEQUENCE_GROUPS)])
        per_group = zip(*(tf.split(t, sizes, 0, num=_SEQUENCE_GROUPS) if t is not None else
                          [None] * _SEQUENCE_GROUPS for t in (query, key, value, content_logits)))
        relative = {name: self._relative(getattr(self, name), geometry, dtype) for name, used in (
            ('query_rpe', self.use_query_rpe_similarity), ('key_rpe', self.use_key_rpe_similarity),
            ('value_rpe', self.retrieve_value_rpe)) if used}
        if 'key_rpe' in relative:  # In the layout of the key term's product, once for all groups.
            relative['key_rpe'] = tf.transpose(relative['key_rpe'], [1, 2, 0])
        outputs = [self._attend_sequences(*group, scale, relative, mask, geometry, length) for group in per_group]
        outputs = [tf.concat(parts, 0) for parts in zip(*outputs)]
        return self.batch_norm_retrieved_output.normalize_sum(outputs, training=training)

    def _attend_sequences(self, query: tf.Tensor, key: tf.Tensor, value: tf.Tensor,
                          content_logits: Optional[tf.Tensor], scale: tf.Tensor, relative: dict,
                          mask: Optional[tf.Tensor], geometry: dict, length: int) -> List[tf.Tensor]:
        """Logits, softmax and the retrieved outputs of a group of sequences, before their batch norm.

        Args:
          query, key, value: the group's blocked q [n, h, i, u, dk], k [n, h, i, w, dk], v [n, h, i, w, dv].
          content_logits: the group's unscaled float32 content logits when already computed, else None.
          scale: the per-(term, head) logit scales, [terms, h, 1, 1, 1].
          relative: the gathered [queries, keys, depth] slice of each relative table, by table name; the key
            table's as [keys, depth, queries].
          mask: the [blocks, block, keys] validity mask of a local span, else None.

        Returns:
          Per retrieval term, float32 [n, length, total_value_depth].
        """
        dtype = query.dtype
        terms = []
        for index, name in enumerate(self._similarity_terms):
            if name == 'content' and content_logits is not None:
                term = tf.cast(scale[index], tf.float32) * content_logits
            elif name == 'content':
                term = batch_matmul.matmul(scale[index] * query, key, transpose_b=True)
            elif name == 'query_rpe':
                term = _query_relative(scale[index] * query, relative['query_rpe'])
            else:
                term = _key_relative(scale[index] * key, relative['key_rpe'])
            terms.append(tf.cast(term, tf.float32))
        logits = tf.add_n(terms)
        if mask is not None:
            logits = logits + (1.0 - mask) * _MASKED_LOGIT
        weights = tf.cast(tf.nn.softmax(logits, axis=-1), dtype)

        # Each retrieved output goes to the layer's [batch, length, (head, depth)] layout before its batch norm, so
        # that the moments, scale and shift work on the contiguous last axis and the padded queries drop out.
        outputs = []
        for name in self._retrieval_terms:
            if name == 'content':
                output = tf.transpose(batch_matmul.matmul(weights, value), [0, 2, 3, 1, 4])
            else:
                output = _retrieve_relative(weights, relative['value_rpe'])
            output = tf.reshape(output, [tf.shape(output)[0], geometry['blocks'] * geometry['block'],
                                         self.total_value_depth])
            if geometry['blocks'] * geometry['block'] > length:
                output = output[:, :length]
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
            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon, use_sync_batchnorm=self.use_sync_batchnorm)
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
        stds, bn settings), then `keras.layers.Layer` arguments.
    """

    _ATTENTION_ARGS = ('max_span', 'block_size', 'query_shape', 'use_query_rpe_similarity', 'use_key_rpe_similarity',
                       'use_content_similarity', 'retrieve_value_rpe', 'retrieve_value_content',
                       'initialization_std_for_query_key_rpe', 'initialization_std_for_value_rpe', 'bn_momentum',
                       'bn_epsilon', 'use_sync_batchnorm')

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
        x = tf.reshape(tf.transpose(inputs, [0, 2, 1, 3]), [-1, height, inputs.shape[-1]])
        x = self.height_axis(x, training=training)
        x = tf.transpose(tf.reshape(x, [batch, width, height, x.shape[-1]]), [0, 2, 1, 3])
        subsample = self.strides > 1 and not self.stride_by_average_pool
        if subsample:
            x = x[:, ::self.strides]
            height = x.shape[1]
        x = tf.reshape(x, [-1, width, x.shape[-1]])
        x = self.width_axis(x, training=training)
        x = tf.reshape(x, [batch, height, width, x.shape[-1]])
        if subsample:
            x = x[:, :, ::self.strides]
        elif self.strides > 1:
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
