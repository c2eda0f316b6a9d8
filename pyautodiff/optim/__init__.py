"""Optimizers: SGD (momentum, weight decay), Adam (L2 weight decay, as torch.optim.Adam; amsgrad),
AdamW (decoupled weight decay), RMSprop and Adagrad, with parameter groups and state dicts, and
learning-rate schedulers in optim.lr_scheduler. A step applies the published update rule to each
parameter in place, in one C call per parameter (csrc/optim.c): nothing is recorded on the tape, no
graph is built, and the only tensors ever allocated are the state buffers, once, on the first step."""
from .optimizers import Optimizer, SGD, Adam, AdamW, RMSprop, Adagrad
from . import lr_scheduler

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "lr_scheduler"]
