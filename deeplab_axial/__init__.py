"""deeplab_axial: Axial-DeepLab (Wang et al., ECCV 2020) on TensorFlow 2.21 and Keras 3."""

__version__ = '0.1.0'
