"""Activation functions by name, as deeplab2's `activations.get_activation` resolves them.

'gelu' is the exact (erf) GeLU, deeplab2's default; Keras 3's `keras.activations.gelu` defaults to the tanh
approximation, which deeplab2 calls 'approximated_gelu'.
"""

import functools
from typing import Callable

import tensorflow as tf

_ACTIVATIONS = {
    'relu': tf.nn.relu,
    'gelu': functools.partial(tf.nn.gelu, approximate=False),
    'approximated_gelu': functools.partial(tf.nn.gelu, approximate=True),
    'swish': tf.nn.silu,
    'silu': tf.nn.silu,
}
NAMES = tuple(_ACTIVATIONS)


def get(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """The activation called `name` (one of `NAMES`).

    Raises:
      ValueError: an unknown name.
    """
    if name not in _ACTIVATIONS:
        raise ValueError(f'Unknown activation {name!r}; expected one of {NAMES}')
    return _ACTIVATIONS[name]


def hard_sigmoid(x: tf.Tensor) -> tf.Tensor:
    """deeplab2's hard sigmoid, relu6(x + 3) * 0.16667 (its constant, not 1/6)."""
    return tf.nn.relu6(x + 3.0) * 0.16667
