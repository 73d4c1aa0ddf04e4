"""The trainer's tasks follow the written protocol (trainer/task.py) that train_lib drives them through."""

import inspect

import pytest

from deeplab_axial import common
from trainer import classification_task, panoptic_task, train_lib
from trainer.task import Task


def _parameters(function, skip_self: bool):
    names = list(inspect.signature(function).parameters)
    return names[1:] if skip_self else names


@pytest.mark.parametrize('name', sorted(train_lib._TASKS))
def test_every_task_of_train_lib_follows_the_protocol(name):
    task = train_lib._TASKS[name]
    assert isinstance(task, Task)
    for member in ('make_loss_fn', 'build_evaluator'):  # the parameters train_lib passes, in its order
        assert _parameters(getattr(task, member), False) == _parameters(getattr(Task, member), True), member
    assert task.OUTPUT_KEYS[0] == common.TOTAL_LOSS


def test_both_tasks_are_in_train_lib():
    assert train_lib._TASKS == {common.TASK_PANOPTIC: panoptic_task, common.TASK_CLASSIFICATION: classification_task}


def test_a_task_missing_a_member_does_not_pass():
    class Partial:
        OUTPUT_KEYS = (common.TOTAL_LOSS,)

        @staticmethod
        def make_loss_fn(config, descriptor, model):
            return None

    assert not isinstance(Partial, Task)
