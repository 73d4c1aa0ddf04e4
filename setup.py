"""Installs deeplab_axial (library), trainer and evaluation.

TensorFlow comes through an extra so that a CPU install never pulls CUDA wheels:
  pip install ".[cpu]"   # tensorflow-cpu
  pip install ".[gpu]"   # tensorflow with its CUDA wheels
"""

import setuptools

_TF = '>=2.21,<2.22'

setuptools.setup(
    name='deeplab_axial',
    version='0.1.0',
    description='Axial-DeepLab (ECCV 2020) for TensorFlow 2.21 / Keras 3: layers, models, trainer, evaluation.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10,<3.14',
    packages=setuptools.find_packages(include=['deeplab_axial', 'deeplab_axial.*', 'trainer', 'trainer.*',
                                               'evaluation', 'evaluation.*']),
    package_data={'deeplab_axial': ['data/*.json', 'protos/*.proto']},
    include_package_data=True,
    install_requires=[
        'keras>=3.12,<4',
        'numpy>=1.26,<3',
        'protobuf>=7.35.1,<8',
        'absl-py>=2.1,<3',
        'pillow>=10,<13',
        'pycocotools>=2.0.8,<3',
    ],
    extras_require={
        'cpu': [f'tensorflow-cpu{_TF}'],
        'gpu': [f'tensorflow[and-cuda]{_TF}'],
        # TensorFlow 2.21 has no TPU build on the package index; the newest is tensorflow-tpu 2.20 (README).
        'tpu': ['tensorflow-tpu>=2.20,<2.21'],
        # panopticapi-lite (the official COCO PQ, used as a test oracle) declares numpy<2 although it runs on
        # numpy 2; it is installed with --no-deps by the README's test command, and its real needs are listed here.
        'test': [
            'pytest>=8,<10',
            'pytest-xdist>=3.5,<4',  # the suite runs on both cores (pytest.ini)
            'cityscapesscripts>=2.2,<3',
            'matplotlib>=3.7',
            'scikit-image>=0.21',
            'platformdirs>=3',
            'tensorflow-datasets>=4.9,<5',
            'grpcio-tools>=1.85,<2',
            'pyspng>=0.1.3,<1',
            'zlib-ng>=1.1.0,<2',
            'numba>=0.68,<1',
        ],
        'tfds': ['tensorflow-datasets>=4.9,<5'],
        # Faster evaluation (libspng and zlib-ng PNG decoding, a compiled overlap count); identical results without.
        'eval': ['pyspng>=0.1.3,<1', 'zlib-ng>=1.1.0,<2', 'numba>=0.68,<1'],
        'bench': ['hotcoco>=1.3,<2'],
        # To look at training: `tensorboard --logdir MODEL_DIR` (no TensorFlow or CUDA wheels come with it).
        'tensorboard': ['tensorboard>=2.21,<2.22'],
    },
    # Beside the `python -m` forms (README); each exits 0, 1 (a named outcome) or 2 (a user error).
    entry_points={'console_scripts': [
        'deeplab-axial-demo=trainer.demo:run',
        'deeplab-axial-train=trainer.train:run',
        'deeplab-axial-export=trainer.export_model:run',
        'deeplab-axial-predict=deeplab_axial.predict:main',
        'deeplab-axial-evaluate=evaluation.evaluate:main',
        'deeplab-axial-convert-coco=deeplab_axial.data.build_coco_data:run',
        'deeplab-axial-convert-cityscapes=deeplab_axial.data.build_cityscapes_data:run',
        'deeplab-axial-convert-checkpoint=deeplab_axial.tools.convert_checkpoint:main',
    ]},
)
