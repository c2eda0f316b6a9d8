"""micrograd's classic demo with pyautodiff: a 2-16-16-1 MLP whose every weight is its own 0-d
tensor, trained with a max-margin (hinge) loss on the two-moons data set.

The graph is scalar-heavy on purpose (about 70,000 scalar nodes per step), like micrograd's
Value engine; pyautodiff records them on its C tape and sweeps them in C. Data comes from NumPy,
as sklearn.datasets.make_moons would make it (100 points, noise 0.1).
Run: python examples/two_moons.py [--steps 100]
"""
import argparse
import random
import time

import numpy as np

import pyautodiff as ad
from pyautodiff import optim


def make_moons(n=100, noise=0.1, seed=1):
    rng = np.random.default_rng(seed)
    t_out, t_in = np.linspace(0, np.pi, n - n // 2), np.linspace(0, np.pi, n // 2)
    X = np.concatenate([np.stack([np.cos(t_out), np.sin(t_out)], 1),
                        np.stack([1 - np.cos(t_in), 0.5 - np.sin(t_in)], 1)])
    y = np.concatenate([-np.ones(n - n // 2), np.ones(n // 2)])   # labels -1 / +1
    return X + rng.normal(0, noise, X.shape), y


class Neuron:
    def __init__(self, nin, nonlin):
        self.w = [ad.tensor(random.uniform(-1, 1), requires_grad=True) for _ in range(nin)]
        self.b = ad.tensor(0.0, requires_grad=True)
        self.nonlin = nonlin

    def __call__(self, x):
        act = sum((wi * xi for wi, xi in zip(self.w, x)), self.b)
        return ad.relu(act) if self.nonlin else act

    def parameters(self):
        return self.w + [self.b]


class MLP:
    def __init__(self, nin, nouts):
        sizes = [nin] + nouts
        self.layers = [[Neuron(sizes[i], nonlin=i != len(nouts) - 1) for _ in range(sizes[i + 1])]
                       for i in range(len(nouts))]

    def __call__(self, x):
        for layer in self.layers:
            x = [n(x) for n in layer]
        return x[0]

    def parameters(self):
        return [p for layer in self.layers for n in layer for p in n.parameters()]


def loss_and_accuracy(model, X, y, alpha=1e-4):
    scores = [model(list(map(float, xi))) for xi in X]
    losses = [ad.relu(1 - yi * s) for yi, s in zip(y, scores)]          # hinge
    data_loss = sum(losses[1:], losses[0]) * (1.0 / len(losses))
    reg_loss = alpha * sum((p * p for p in model.parameters()), ad.tensor(0.0))
    accuracy = np.mean([(yi > 0) == (s.item() > 0) for yi, s in zip(y, scores)])
    return data_loss + reg_loss, accuracy


def ascii_boundary(model, X, y, width=60, height=20):
    xs = np.linspace(X[:, 0].min() - 0.3, X[:, 0].max() + 0.3, width)
    ys = np.linspace(X[:, 1].max() + 0.3, X[:, 1].min() - 0.3, height)
    rows = []
    with ad.no_grad():
        for gy in ys:
            rows.append("".join("+" if model([float(gx), float(gy)]).item() > 0 else "." for gx in xs))
    for (px, py), label in zip(X, y):
        col = int(round((px - xs[0]) / (xs[-1] - xs[0]) * (width - 1)))
        row = int(round((ys[0] - py) / (ys[0] - ys[-1]) * (height - 1)))
        rows[row] = rows[row][:col] + ("O" if label > 0 else "X") + rows[row][col + 1:]
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    random.seed(1337)
    X, y = make_moons()
    model = MLP(2, [16, 16, 1])
    opt = optim.SGD(model.parameters(), lr=1.0)
    print(f"{len(model.parameters())} scalar parameters, {len(X)} points")
    start = time.perf_counter()
    for k in range(args.steps):
        loss, acc = loss_and_accuracy(model, X, y)
        opt.zero_grad()
        loss.backward()
        opt.param_groups[0]["lr"] = 1.0 - 0.9 * k / args.steps        # micrograd's schedule
        opt.step()
        if k % 10 == 0 or k == args.steps - 1:
            print(f"step {k:3d} loss {loss.item():.4f}, accuracy {100 * acc:.0f}%")
    print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s")
    print(ascii_boundary(model, X, y))


if __name__ == "__main__":
    main()
