"""Shape ops of issue 17 beyond the op table (tests/op_table.py drives forward, VJP, JVP, finite
differences and the compositions of every one): bad arguments are clear errors naming the op, and
a few second-order checks through ad.hessian and jvp(grad) against closed forms."""
import numpy as np
import pytest

import pyautodiff as ad

X = np.arange(24.0).reshape(2, 3, 4)

BAD = [
    (lambda: ad.squeeze(X, 0), ValueError, "squeeze.*axis 0.*size is 2"),
    (lambda: ad.squeeze(X, 3), ValueError, "squeeze.*axis 3 is out of bounds"),
    (lambda: ad.expand_dims(X, 4), ValueError, "expand_dims.*axis 4"),
    (lambda: ad.expand_dims(X, (0, 0)), ValueError, "expand_dims: repeated axis"),
    (lambda: ad.unsqueeze(X, 1.0), TypeError, "unsqueeze: dim"),
    (lambda: ad.flatten(X, 2, 1), ValueError, "flatten: start_dim"),
    (lambda: ad.flatten(X, 0, 3), ValueError, "flatten.*3"),
    (lambda: ad.permute(X, 0, 1), ValueError, "permute.*each of the 3 axes"),
    (lambda: ad.permute(X, 0, 0, 1), ValueError, "permute: repeated"),
    (lambda: ad.moveaxis(X, (0, 1), 2), ValueError, "moveaxis.*same number"),
    (lambda: ad.moveaxis(X, 5, 0), ValueError, "moveaxis.*axis 5"),
    (lambda: ad.swapaxes(X, 0, -4), ValueError, "swapaxes.*axis -4"),
    (lambda: ad.flip(X, 3), ValueError, "flip.*axis 3"),
    (lambda: ad.roll(X, (1, 2, 3), (0, 1)), ValueError, "roll.*broadcast"),
    (lambda: ad.roll(X, 1.5, 0), TypeError, "roll: shift"),
    (lambda: ad.roll(X, 1, 3), ValueError, "roll.*axis 3"),
    (lambda: ad.tile(X, (-1,)), ValueError, "tile.*negative"),
    (lambda: ad.repeat(X, -1, 0), ValueError, "repeat.*negative"),
    (lambda: ad.repeat(X, [1, 2], 1), ValueError, "repeat: 2 repeats for an axis of length 3"),
    (lambda: ad.repeat(X, 1.5, 1), TypeError, "repeat: repeats must be integers"),
    (lambda: ad.pad(X, ((1, 1), (1, 1))), ValueError, "pad: pad_width"),
    (lambda: ad.pad(X, -1), ValueError, "pad.*negative"),
    (lambda: ad.pad(X, 1.5), TypeError, "pad: pad_width must be integers"),
    (lambda: ad.pad(X, 1, mode="symmetric"), ValueError, "pad: mode"),
    (lambda: ad.pad(np.zeros((2, 0)), 1, mode="reflect"), ValueError, "pad: cannot pad the empty axis 1"),
    (lambda: ad.take_along_axis(X, np.zeros((2, 1, 4)), 1), TypeError, "take_along_axis: indices must be integers"),
    (lambda: ad.take_along_axis(X, np.zeros((2, 4), int), 1), ValueError, "take_along_axis.*as many axes"),
    (lambda: ad.take_along_axis(X, np.full((2, 1, 4), 3), 1), IndexError, "take_along_axis.*out of bounds"),
    (lambda: ad.take_along_axis(X, ad.tensor([0.0]), 1), TypeError, "take_along_axis.*not a Tensor"),
    (lambda: ad.put_along_axis(X, np.zeros((2, 1, 4), int), np.ones(3), 1), ValueError, "put_along_axis: values"),
    (lambda: ad.scatter_add(X, 1, np.zeros((2, 1, 5), int), np.ones((2, 1, 5))), ValueError, "scatter_add: index of shape"),
    (lambda: ad.scatter_add(X, 1, np.full((2, 1, 4), 3), np.ones((2, 1, 4))), IndexError, "scatter_add: index values"),
    (lambda: ad.scatter_add(X, 1, np.zeros((2, 1), int), np.ones((2, 1))), ValueError, "scatter_add.*number of axes"),
    (lambda: ad.tril(np.float64(1.0)), ValueError, "tril: a 0-d"),
    (lambda: ad.diagonal(np.ones(3)), ValueError, "diagonal: needs at least 2 axes"),
    (lambda: ad.diagonal(X, 0, 1, -2), ValueError, "diagonal: axis1 and axis2 cannot be the same"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments_raise_naming_the_op(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_float32_stays_float32():
    x = ad.tensor(X.astype(np.float32))
    for y in (ad.squeeze(x[:1]), ad.roll(x, 1, 0), ad.tile(x, 2), ad.repeat(x, 2), ad.pad(x, 1, mode="edge"),
              ad.pad(x, 1, constant_values=2), ad.tril(x), ad.diagonal(x), ad.flip(x), ad.moveaxis(x, 0, 1)):
        assert y.dtype == np.float32


def test_hessian_through_moves_is_the_moved_hessian():
    # f(x) = sum(w * move(x)^3) has Hessian diag(6 w' x) where w' is w moved back (the VJP of move)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    for move in (lambda t: ad.roll(t, 2, 1), lambda t: ad.flip(t, 0), lambda t: ad.pad(t, 1, mode="reflect"),
                 lambda t: ad.tile(t, (2, 1)), lambda t: ad.diagonal(t, 1)):
        w = rng.standard_normal(move(ad.tensor(x)).shape)
        h = ad.hessian(lambda v: (w * move(v) ** 3).sum())(x).numpy().reshape(12, 12)
        grid = np.arange(12.0).reshape(3, 4)
        picks = move(ad.tensor(grid)).numpy().astype(int).reshape(-1)
        diag = np.zeros(12)
        np.add.at(diag, picks, 6 * w.reshape(-1) * x.reshape(-1)[picks])
        np.testing.assert_allclose(h, np.diag(diag), rtol=1e-13, atol=1e-13)


def test_jvp_of_grad_through_scatter_add_and_put_along_axis():
    rng = np.random.default_rng(1)
    x, src, v = rng.standard_normal((3, 4)), rng.standard_normal((2, 4)), rng.standard_normal((3, 4))
    index = np.array([[2, 0, 0, 1], [2, 2, 0, 1]])

    def f(t):
        return (ad.scatter_add(t, 0, index, src * t[:2]) ** 2).sum()

    g = ad.grad(f)
    _, hv = ad.jvp(g, (x,), (v,))
    h = 1e-6
    fd = (g(x + h * v).numpy() - g(x - h * v).numpy()) / (2 * h)
    np.testing.assert_allclose(hv.numpy(), fd, rtol=1e-6, atol=1e-7)

    put = lambda t: (ad.put_along_axis(t, np.array([[1, 1, 0, 2]]), t[0:1] * 2.0, 0) ** 2).sum()
    g = ad.grad(put)
    _, hv = ad.jvp(g, (x,), (v,))
    fd = (g(x + h * v).numpy() - g(x - h * v).numpy()) / (2 * h)
    np.testing.assert_allclose(hv.numpy(), fd, rtol=1e-6, atol=1e-7)


def test_put_along_axis_last_write_wins_like_numpy():
    x = np.zeros((1, 3))
    idx = np.array([[1, 1, 1]])
    vals = ad.tensor([[1.0, 2.0, 3.0]], requires_grad=True)
    y = ad.put_along_axis(x, idx, vals, 1)
    expected = x.copy()
    np.put_along_axis(expected, idx, vals.numpy(), 1)
    np.testing.assert_array_equal(y.numpy(), expected)
    y.sum().backward()
    np.testing.assert_array_equal(vals.grad.numpy(), [[0.0, 0.0, 1.0]])
