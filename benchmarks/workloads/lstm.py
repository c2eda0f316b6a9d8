"""lstm: GradBench's LSTM eval (from ADBench), gradient of the sequence loss.

Parameters: main_params (2l, 4b) (weight and bias of each layer), extra_params (3, b) (input
scale, output scale, output bias); constants: state (2l, b) (hidden and cell of each layer) and
sequence (c, b). For each step t < c - 1 the model reads x = sequence[t] * extra[0] through l
layers of

    gates = [x, h, x, h] * weight + bias            (4b, elementwise)
    forget, ingate, outgate = sigmoid of the first three blocks; change = tanh of the fourth
    cell = cell * forget + ingate * change;  h = outgate * tanh(cell);  x = h

predicts y = x * extra[1] + extra[2] and adds sum(sequence[t+1] * (y - log(sum(exp(y)) + 2)));
the loss is minus that total over (c - 1) b. l = 2, c = 1024 and b = 14 (ADBench's lstm_l2_c1024
has 14 characters); quick: c = 64. Inputs are uniform in [-1, 1).

The hand-written NumPy reference is backpropagation through time: the forward keeps each step's
gate activations, cells and inputs, the backward walks the steps and layers in reverse.
"""

import types

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

NAME = "lstm"
TITLE = "GradBench lstm: gradient of the sequence loss, l=2, c=1024, b=14 (quick: c=64)"
PER_OP = False
HAND_LABEL = "hand-written NumPy (backpropagation through time)"
LEAVES = ["main_params (4, 56)", "extra_params (3, 14)"]
ISOLATED = set()
NOT_APPLICABLE = common.GRADBENCH_NOT_WRITTEN
TARGETS = common.gradbench_targets()
NOTES = []
TINY = {"l": 2, "c": 4, "b": 3}


def size(quick):
    return {"l": 2, "c": 64 if quick else 1024, "b": 14}


def n_ops(size):
    return None


def make_data(size):
    l, c, b = size["l"], size["c"], size["b"]
    generator = common.rng(19)
    uniform = lambda *shape: generator.uniform(-1.0, 1.0, size=shape)  # noqa: E731
    return {"leaves": [uniform(2 * l, 4 * b), uniform(3, b)], "state": uniform(2 * l, b),
            "sequence": uniform(c, b)}


def loss(L, main, extra, state, sequence):
    """The objective, written once for pyautodiff (L = ad) and torch (TorchNames); state and
    sequence are lists of rows (constants)."""
    b = extra.shape[1]
    state = list(state)
    total = 0.0
    x_in = sequence[0]
    for t in range(len(sequence) - 1):
        x = x_in * extra[0]
        for layer in range(0, len(state), 2):
            hidden, cell = state[layer], state[layer + 1]
            gates = L.concatenate([x, hidden, x, hidden]) * main[layer] + main[layer + 1]
            forget = L.sigmoid(gates[:b])
            ingate = L.sigmoid(gates[b:2 * b])
            outgate = L.sigmoid(gates[2 * b:3 * b])
            change = L.tanh(gates[3 * b:])
            cell = cell * forget + ingate * change
            hidden = outgate * L.tanh(cell)
            state[layer], state[layer + 1] = hidden, cell
            x = hidden
        y = x * extra[1] + extra[2]
        gold = sequence[t + 1]
        total = total + L.sum(gold * (y - L.log(L.sum(L.exp(y)) + 2.0)))
        x_in = gold
    return -total / ((len(sequence) - 1) * b)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


NUMPY_NAMES = types.SimpleNamespace(concatenate=np.concatenate, sigmoid=_sigmoid, tanh=np.tanh,
                                    log=np.log, exp=np.exp, sum=np.sum)


def objective(data, main, extra):
    return loss(NUMPY_NAMES, main, extra, data["state"], data["sequence"])


def numpy_gradient(main, extra, state, sequence):
    b = extra.shape[1]
    layers = len(state) // 2
    steps = len(sequence) - 1
    count = steps * b
    hidden = [state[2 * k] for k in range(layers)]
    cells = [state[2 * k + 1] for k in range(layers)]
    tape = []  # per step: (input, [(x, h_prev, c_prev, f, i, o, g, tanh_c)], top x, softmax part)
    total = 0.0
    for t in range(steps):
        x0 = sequence[t]
        x = x0 * extra[0]
        saved = []
        for k in range(layers):
            weight, bias = main[2 * k], main[2 * k + 1]
            h_prev, c_prev = hidden[k], cells[k]
            gates = np.concatenate([x, h_prev, x, h_prev]) * weight + bias
            f, i, o = _sigmoid(gates[:3 * b]).reshape(3, b)
            g = np.tanh(gates[3 * b:])
            c_new = c_prev * f + i * g
            tanh_c = np.tanh(c_new)
            h_new = o * tanh_c
            saved.append((x, h_prev, c_prev, f, i, o, g, tanh_c))
            hidden[k], cells[k] = h_new, c_new
            x = h_new
        y = x * extra[1] + extra[2]
        e = np.exp(y)
        denominator = e.sum() + 2.0
        gold = sequence[t + 1]
        total += gold @ y - gold.sum() * np.log(denominator)
        tape.append((x0, saved, x, gold - gold.sum() * e / denominator))
    d_main = np.zeros_like(main)
    d_extra = np.zeros_like(extra)
    dh_next = [np.zeros(b) for _ in range(layers)]
    dc_next = [np.zeros(b) for _ in range(layers)]
    scale = -1.0 / count
    for x0, saved, x_top, d_y in reversed(tape):
        d_y = scale * d_y
        d_extra[1] += d_y * x_top
        d_extra[2] += d_y
        dx = d_y * extra[1]
        for k in reversed(range(layers)):
            x, h_prev, c_prev, f, i, o, g, tanh_c = saved[k]
            dh = dx + dh_next[k]
            dc = dc_next[k] + dh * o * (1.0 - tanh_c * tanh_c)
            d_gates = np.concatenate([dc * c_prev * f * (1.0 - f), dc * g * i * (1.0 - i),
                                      dh * tanh_c * o * (1.0 - o), dc * i * (1.0 - g * g)])
            d_main[2 * k] += d_gates * np.concatenate([x, h_prev, x, h_prev])
            d_main[2 * k + 1] += d_gates
            d_cat = d_gates * main[2 * k]
            dx = d_cat[:b] + d_cat[2 * b:3 * b]
            dh_next[k] = d_cat[b:2 * b] + d_cat[3 * b:]
            dc_next[k] = dc * f
        d_extra[0] += dx * x0
    return -total / count, [d_main, d_extra]


def build_numpy(data, size):
    main, extra = data["leaves"]
    state, sequence = data["state"], data["sequence"]
    return Cell(lambda: numpy_gradient(main, extra, state, sequence),
                lambda out: (float(out[0]), out[1]))


def build_pyautodiff(data, size):
    ad = peers.load("pyautodiff")
    state = [ad.tensor(row) for row in data["state"]]
    sequence = [ad.tensor(row) for row in data["sequence"]]
    return common.pyautodiff_cell(data["leaves"],
                                  lambda main, extra: loss(ad, main, extra, state, sequence))


def build_torch(data, size):
    torch = peers.load("torch")
    names = common.TorchNames(torch)
    state = list(torch.from_numpy(data["state"]))
    sequence = list(torch.from_numpy(data["sequence"]))
    return common.torch_cell(data["leaves"],
                             lambda main, extra: loss(names, main, extra, state, sequence))


BUILDERS = common.builders(globals())
