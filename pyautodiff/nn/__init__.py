"""Neural-network building blocks on top of the public API: Parameter, Module, Linear, Sequential,
ModuleList, ModuleDict and activation modules; loss functions and activations in nn.functional;
clip_grad_norm_ and clip_grad_value_ in nn.utils."""
from . import functional, utils
from .parameter import Parameter
from .modules import Module, Linear, Sequential, ModuleList, ModuleDict, ReLU, Tanh, Sigmoid

__all__ = ["Parameter", "Module", "Linear", "Sequential", "ModuleList", "ModuleDict", "ReLU", "Tanh", "Sigmoid",
           "functional", "utils"]
