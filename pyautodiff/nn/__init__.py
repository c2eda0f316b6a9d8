"""Neural-network building blocks on top of the public API: Parameter, Module, Linear, Sequential,
ModuleList, ModuleDict, activation modules, and (nn/layers.py) convolution, pooling, normalization,
embedding, dropout and loss modules with PyTorch's names; their functions in nn.functional;
initialisers in nn.init; clip_grad_norm_ and clip_grad_value_ in nn.utils."""
from . import functional, init, utils
from .parameter import Parameter
from .modules import Module, Linear, Sequential, ModuleList, ModuleDict, ReLU, Tanh, Sigmoid
from . import layers as _layers
from .layers import (Conv1d, Conv2d, ConvTranspose2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, LayerNorm,
                     BatchNorm1d, BatchNorm2d, GroupNorm, Embedding, Dropout, Identity, GELU, SiLU, LeakyReLU, ELU,
                     Softplus, Hardtanh, CrossEntropyLoss, MSELoss, BCEWithLogitsLoss, BCELoss, NLLLoss, L1Loss,
                     HuberLoss, SmoothL1Loss, KLDivLoss)

__all__ = ["Parameter", "Module", "Linear", "Sequential", "ModuleList", "ModuleDict", "ReLU", "Tanh", "Sigmoid",
           "functional", "init", "utils"] + _layers.__all__
