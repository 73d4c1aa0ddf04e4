"""Writes the official PyTorch Axial-ResNet files that tests/test_pytorch_checkpoint.py reads; not run by the tests.

It runs the official code (csrhddlam/axial-deeplab, `lib/models/axialnet.py`) unchanged, from a checkout given on the
command line, with torch from the package registry in a scratch environment (our package does not depend on torch):

    python -m venv /tmp/ptenv && /tmp/ptenv/bin/pip install "torch==2.13.0+cpu" numpy
    mkdir /tmp/axialnet && git -C AXIAL_DEEPLAB_REPO archive HEAD | tar -x -C /tmp/axialnet
    /tmp/ptenv/bin/python tests/data/pytorch/make_fixtures.py /tmp/axialnet

axial26s_small.npz: the state dict (same names as the official model's) of an axial26s layout (blocks [1, 2, 4, 1])
at width s = 0.125 with 4 attention heads and 6 classes (the synthetic classification dataset's), built for 64x64
inputs (the official layer needs kernel_size == axis length, so the stage kernel sizes 56/56/28/14 scale to
16/16/8/4). Every weight is random: every
batch-norm scale and shift is drawn at random (the zero-initialised last scale of each block included) and every
relative table is redrawn, so that no term is an identity and no table is symmetric; then the batch-norm statistics
are set to those of random images (training passes with cumulative averages). The last scale of each block and the
similarity scales are drawn smaller (0.15-0.45, 0.25-0.75), so that rounding does not grow through the blocks: the
official model's float32 logits then agree with its float64 ones to about 2e-6 (1e-4 at full scales), and the
test's 1e-4 tolerance measures the conversion, not float32 noise.
axial26s_small_outputs.npz: two random 64x64 images (0..255, channels last), and the official model's eval-mode
logits and layer1..layer4 outputs (channels last) on them after torchvision's ImageNet normalisation, which the model
was trained with.
axial_official_layouts.json: for axial26s, axial50s, axial50m and axial50l at their full size (224 input, 1000
classes), the official parameter count (sum of `parameters()`) and every state-dict name with its shape and dtype
(no weights).
"""

import json
import os
import sys
import types

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SMALL = dict(blocks=[1, 2, 4, 1], s=0.125, groups=4, num_classes=6, input_size=64)
VARIANTS = ('axial26s', 'axial50s', 'axial50m', 'axial50l')
# torchvision's ImageNet normalisation (lib/datasets/imagenet1k.py of the official code).
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def _import_axialnet(checkout: str):
    """`lib.models.axialnet` of the checkout, without `lib/__init__.py` (it imports the data loaders, which need
    torchvision; the model does not)."""
    package = types.ModuleType('lib')
    package.__path__ = [os.path.join(checkout, 'lib')]
    sys.modules['lib'] = package
    from lib.models import axialnet
    return axialnet


def _small_model(axialnet):
    """The official AxialAttentionNet with its stage kernel sizes scaled from 224 to SMALL['input_size']."""
    scale = SMALL['input_size'] / 224
    net = axialnet.AxialAttentionNet
    make_layer = net._make_layer

    def scaled_make_layer(self, block, planes, blocks, kernel_size=56, **kwargs):
        return make_layer(self, block, planes, blocks, kernel_size=int(kernel_size * scale), **kwargs)

    net._make_layer = scaled_make_layer
    try:
        return net(axialnet.AxialBlock, SMALL['blocks'], num_classes=SMALL['num_classes'], groups=SMALL['groups'],
                   s=SMALL['s'])
    finally:
        net._make_layer = make_layer


def _normalise(images: np.ndarray) -> torch.Tensor:
    """0..255 channels-last images -> the official model's normalised NCHW input."""
    return torch.from_numpy(((images / 255.0 - MEAN) / STD).astype(np.float32).transpose(0, 3, 1, 2))


def _randomise(model, generator: torch.Generator) -> None:
    """Random batch-norm scales, shifts and relative tables, then batch-norm statistics of random images."""
    batch_norms = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    with torch.no_grad():
        for name, m in batch_norms.items():
            scale = 0.3 if name.endswith('.bn2') else 0.5 if name.endswith('.bn_similarity') else 1.0
            m.weight.copy_(scale * (0.5 + torch.rand(m.weight.shape, generator=generator)))
            m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=generator))
            m.momentum = None  # cumulative averages over the calibration batches
            m.reset_running_stats()
        for name, parameter in model.named_parameters():
            if name.endswith('.relative'):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * parameter.shape[0] ** -0.5)
        model.train()
        for _ in range(3):
            images = torch.rand(4, SMALL['input_size'], SMALL['input_size'], 3, generator=generator).numpy() * 255
            model(_normalise(images))
    model.eval()


def write_small(axialnet) -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    model = _small_model(axialnet)
    _randomise(model, generator)
    rng = np.random.default_rng(2)
    size = SMALL['input_size']
    images = rng.integers(0, 256, (2, size, size, 3)).astype(np.float32)
    layers = {}
    hooks = [getattr(model, f'layer{i}').register_forward_hook(
        lambda module, inputs, output, i=i: layers.__setitem__(f'layer{i}', output)) for i in range(1, 5)]
    with torch.no_grad():
        logits = model(_normalise(images)).numpy()
    for hook in hooks:
        hook.remove()
    np.savez_compressed(os.path.join(HERE, 'axial26s_small.npz'),
                        **{name: value.numpy() for name, value in model.state_dict().items()})
    outputs = {name: value.numpy().transpose(0, 2, 3, 1) for name, value in layers.items()}
    np.savez_compressed(os.path.join(HERE, 'axial26s_small_outputs.npz'), images=images, logits=logits, **outputs)
    print('axial26s_small.npz:', len(model.state_dict()), 'entries,',
          sum(p.numel() for p in model.parameters()), 'parameters; logits', logits.shape)


def write_layouts(axialnet) -> None:
    layouts = {}
    for name in VARIANTS:
        model = getattr(axialnet, name)()
        layouts[name] = dict(
            parameters=sum(p.numel() for p in model.parameters()),
            state_dict=[[key, list(value.shape), str(value.dtype).replace('torch.', '')]
                        for key, value in model.state_dict().items()])
        print(name, layouts[name]['parameters'], 'parameters,', len(layouts[name]['state_dict']), 'entries')
    with open(os.path.join(HERE, 'axial_official_layouts.json'), 'w') as f:
        json.dump(layouts, f, separators=(',', ':'))
        f.write('\n')


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit('usage: make_fixtures.py AXIAL_DEEPLAB_CHECKOUT (a folder holding lib/models/axialnet.py)')
    axialnet = _import_axialnet(sys.argv[1])
    write_small(axialnet)
    write_layouts(axialnet)


if __name__ == '__main__':
    main()
