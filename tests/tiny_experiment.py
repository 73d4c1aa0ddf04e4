"""The tiny Axial-DeepLab config and the synthetic dataset at test sizes, shared by the trainer's end-to-end tests.

Images are 33x49; training crops 33x33, evaluation pads to 33x49; a loop, a checkpoint and a summary every 2 steps.
"""

import os
import subprocess
import sys
from typing import Dict

from deeplab_axial import config_utils
from deeplab_axial.protos import config_pb2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CONFIG = os.path.join(REPO, 'configs', 'synthetic', 'axial_deeplab_tiny.textproto')


def write_synthetic_data(root: str, env: Dict[str, str], num_val: int, classification: bool = False) -> None:
    """8 training and `num_val` validation images under root/coco, their TFRecords under root/tfrecord (and the
    shape classification set under root/classification)."""
    extra = [f'--classification_dir={root}/classification'] if classification else []
    subprocess.run([sys.executable, '-m', 'deeplab_axial.data.synthetic', f'--output_dir={root}/coco',
                    f'--tfrecord_dir={root}/tfrecord', '--num_train=8', f'--num_val={num_val}', '--height=33',
                    '--width=49'] + extra, cwd=REPO, env=env, check=True, capture_output=True, timeout=300)


def tiny_config(tfrecord_dir: str, *, train_batch: int, eval_batch: int, steps: int) -> config_pb2.ExperimentOptions:
    """The tiny config on the synthetic TFRecords in `tfrecord_dir`, trained for `steps` steps."""
    config = config_utils.load_config(TINY_CONFIG, params={'DATA_DIR': tfrecord_dir})
    config.train_dataset_options.batch_size = train_batch
    config.train_dataset_options.crop_size[:] = [33, 33]
    config.eval_dataset_options.batch_size = eval_batch
    config.eval_dataset_options.crop_size[:] = [33, 49]
    trainer = config.trainer_options
    trainer.steps_per_loop = trainer.save_checkpoints_steps = trainer.save_summaries_steps = 2
    trainer.num_checkpoints_to_keep = 100
    trainer.solver_options.training_number_of_steps = steps
    trainer.solver_options.warmup_steps = 2
    config.evaluator_options.eval_interval = 100
    return config
