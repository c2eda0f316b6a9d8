"""Losses, activations, convolution, pooling and normalization as functions (PyTorch's
torch.nn.functional, with NumPy's `axis` for softmax). Convolution and pooling live in _conv.py,
normalization, embedding and dropout in _layers.py, the losses in _losses.py."""
from ..ops import (relu, tanh, sigmoid, softmax, log_softmax, gelu, silu, elu, leaky_relu, softplus, hardtanh)
from . import _conv, _layers, _losses
from ._conv import (unfold, fold, conv1d, conv2d, conv_transpose2d, max_pool2d, avg_pool2d,
                    adaptive_avg_pool2d)
from ._layers import layer_norm, batch_norm, group_norm, embedding, dropout, one_hot
from ._losses import (nll_loss, cross_entropy, binary_cross_entropy, binary_cross_entropy_with_logits, mse_loss,
                      l1_loss, huber_loss, smooth_l1_loss, kl_div)

__all__ = (["relu", "tanh", "sigmoid", "softmax", "log_softmax", "gelu", "silu", "elu", "leaky_relu", "softplus",
            "hardtanh"] + _conv.__all__ + _layers.__all__ + _losses.__all__)


