"""One-line messages for file-system faults: Python's OSError and TensorFlow's file-system errors."""

import errno
import os

import pytest
import tensorflow as tf

from deeplab_axial import io_errors


def test_os_errors_of_the_environment_name_the_path():
    assert io_errors.user_io_message(OSError(errno.ENOSPC, 'No space left on device', '/d/x.png')) == (
        '/d/x.png: No space left on device')
    assert io_errors.user_io_message(PermissionError(errno.EACCES, 'Permission denied', '/d')) == (
        '/d: Permission denied')
    nameless = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))  # what a write to an open file raises
    named = io_errors.with_path(nameless, '/d/y.json')
    assert io_errors.user_io_message(named) == f'/d/y.json: {os.strerror(errno.EDQUOT)}'
    assert io_errors.with_path(named, '/other') is named


@pytest.mark.parametrize('error, expected', [
    (tf.errors.ResourceExhaustedError(None, None, '{{function_node __wrapped__SaveV2_dtypes_2_device_/job:localhost/'
                                      'replica:0/task:0/device:CPU:0}} /m/variables/part-0.tempstate88; No space left '
                                      'on device [Op:SaveV2] name: '),
     '/m/variables/part-0.tempstate88: No space left on device'),
    (tf.errors.PermissionDeniedError(None, None, '/ro/x.tfrecord; Permission denied'),
     '/ro/x.tfrecord: Permission denied'),
    (tf.errors.PermissionDeniedError(None, None, 'Permission denied'), 'Permission denied'),
    (tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor with shape[8,1025,2049,256]'), None),
    (tf.errors.InvalidArgumentError(None, None, 'jpeg::Uncompress failed. Invalid JPEG data'), None),
    (ValueError('bad'), None),
    (OSError(errno.EIO, 'Input/output error', '/d'), None),
])
def test_tensorflow_and_other_errors(error, expected):
    assert io_errors.user_io_message(error) == expected
