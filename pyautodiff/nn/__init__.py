"""Neural-network building blocks on top of the public API: Module, Linear, Sequential and
activation modules; loss functions and activations in nn.functional."""
from . import functional
from .modules import Module, Linear, Sequential, ReLU, Tanh, Sigmoid

__all__ = ["Module", "Linear", "Sequential", "ReLU", "Tanh", "Sigmoid", "functional"]
