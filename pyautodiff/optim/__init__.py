"""Optimizers: SGD (momentum, weight decay), Adam (L2 weight decay, as torch.optim.Adam) and AdamW
(decoupled weight decay). Each step reads values and grads as NumPy arrays, applies the published
update rule, and writes the new values into the same leaf tensors in place (ad_assign): nothing
is recorded on the tape and no graph or tensor is allocated."""
from .optimizers import Optimizer, SGD, Adam, AdamW

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]
