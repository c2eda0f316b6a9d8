"""nn.Parameter: the marker that makes a tensor attribute of a Module part of its state."""
from ..tensor import Tensor, _adopt, tensor


class Parameter(Tensor):
    """A leaf Tensor that a Module registers as a parameter when assigned to one of its attributes
    (PyTorch's rule: plain tensor attributes are not parameters). requires_grad is True unless
    given. Parameter(data) holds a copy of data's values; ops on a Parameter give plain Tensors."""

    __slots__ = ()

    def __init__(self, data=None, requires_grad=True, dtype=None):
        _adopt(self, tensor([] if data is None else data, dtype=dtype, requires_grad=requires_grad))

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()

    def __reduce__(self):
        # copy.deepcopy of a module keeps its parameters Parameters (see Tensor.__reduce__)
        return (Parameter, (self.numpy(), self.requires_grad))
