"""The main job: `python -m pyautodiff.demo` trains an MLP on the handwritten digits that ship with
the package, after checking the model's gradient numerically, and reports where the time went.
`--model cnn` trains a small CNN instead (two 3x3 convolutions with batch norm, max pooling,
dropout), which reaches a higher accuracy.

The last line is always `test accuracy: NN.N%`, measured on 360 images (20%) held out from
training; the split is the same in every run, whatever --seed, so runs are comparable.

--save PATH writes a checkpoint after every epoch (model, optimizer, scheduler, epoch, the
shuffling generator's state and the curves, with ad.save); --resume PATH continues from one, and the
resumed run is bit for bit the uninterrupted one (same options required); --stop-after N ends after
epoch N, as an interruption would.
"""
import argparse
import sys
import time

import numpy as np

import pyautodiff as ad
from pyautodiff import nn, optim
from pyautodiff.data import load_digits
from pyautodiff.nn import functional as F

TEST_FRACTION = 0.2
SPLIT_SEED = 12345


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m pyautodiff.demo",
                                description="Train an MLP (or a small CNN) classifier on the bundled 8x8 digits "
                                            "with pyautodiff.")
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp",
                   help="mlp: 64 -> hidden -> 10 (default); cnn: two 3x3 conv + batch norm layers, max pooling, "
                        "dropout, a linear layer")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training set (default 20; cnn 10)")
    p.add_argument("--hidden", type=int, default=64, help="hidden units of the mlp (default 64)")
    p.add_argument("--lr", type=float, default=None, help="Adam's initial learning rate, decayed to 0 along a cosine "
                   "(default 0.01; cnn 0.003)")
    p.add_argument("--batch-size", type=int, default=32, help="minibatch size (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation and the shuffling (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64", help="parameter dtype")
    p.add_argument("--plot", metavar="PATH", help="write loss and accuracy curves to PATH (PNG; needs matplotlib)")
    p.add_argument("--save", metavar="PATH", help="write a checkpoint to PATH after every epoch (ad.save)")
    p.add_argument("--resume", metavar="PATH", help="continue from a checkpoint written by --save")
    p.add_argument("--stop-after", type=int, metavar="N", help="end after epoch N, as an interruption would")
    p.add_argument("--graph", metavar="PATH", help="write the model's recorded graph (one batch's loss) to PATH: "
                   "DOT text for .dot, else SVG/PNG/PDF (needs graphviz or the dot program)")
    args = p.parse_args(argv)
    cnn = args.model == "cnn"
    if args.epochs is None:
        args.epochs = 10 if cnn else 20
    if args.lr is None:
        args.lr = 0.003 if cnn else 0.01
    if args.stop_after is not None and args.stop_after < 1:
        p.error("--stop-after must be at least 1")
    for name in ("epochs", "hidden", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.lr > 0:
        p.error("--lr must be positive")
    return args


def split(X, y):
    order = np.random.default_rng(SPLIT_SEED).permutation(len(X))
    n_test = int(round(TEST_FRACTION * len(X)))
    test, train = order[:n_test], order[n_test:]
    return X[train], y[train], X[test], y[test]


def run_gradcheck(model, X, y):
    """ad.gradcheck on the model's loss as a function of its parameters, on 16 training images,
    in float64 whatever --dtype (float32 finite differences cannot resolve small errors)."""
    lin1, lin2 = model[0], model[2]
    xb, yb = X[:16], y[:16]

    def loss_fn(W1, b1, W2, b2):
        return F.cross_entropy(F.relu(xb @ W1.T + b1) @ W2.T + b2, yb)

    params = [p.numpy().astype(np.float64) for p in (lin1.weight, lin1.bias, lin2.weight, lin2.bias)]
    with ad.no_grad():
        if not np.isclose(loss_fn(*params).item(), F.cross_entropy(model(xb), yb).item(), rtol=1e-5):
            raise RuntimeError("demo: the gradcheck's loss_fn no longer computes the model's loss")
    ad.gradcheck(loss_fn, tuple(params), n_directions=8, seed=0)
    n = sum(p.size for p in params)
    print(f"gradcheck: ad.gradcheck of the loss w.r.t. all {n:,} parameters (float64, 8 random "
          f"directions, central differences, 16 images): passed")


def build_cnn(seed, dtype):
    """(N, 1, 8, 8) -> conv 3x3 (16) -> batch norm -> ReLU -> conv 3x3 (32) -> batch norm -> ReLU ->
    max pool 2 -> dropout 0.25 -> Linear 512 -> 10. Padding 1 keeps the 8x8 grid through both
    convolutions, so the pooled map is 32 x 4 x 4."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, seed=seed, dtype=dtype), nn.BatchNorm2d(16, dtype=dtype),
                         nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1, seed=seed + 1, dtype=dtype), nn.BatchNorm2d(32, dtype=dtype),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25, seed=seed + 2), nn.Flatten(),
                         nn.Linear(32 * 4 * 4, 10, seed=seed + 3, dtype=dtype))


def cnn_loss(params, model, xb, yb, training):
    """The CNN's loss as a function of its parameters, without dropout; training=True normalizes by
    the batch's statistics (and leaves the running ones alone), False by the model's running ones."""
    W1, b1, g1, c1, W2, b2, g2, c2, W3, b3 = params
    bn1, bn2 = model[1], model[4]
    stats1 = (None, None) if training else (bn1.running_mean, bn1.running_var)
    stats2 = (None, None) if training else (bn2.running_mean, bn2.running_var)
    h = F.relu(F.batch_norm(F.conv2d(xb, W1, b1, padding=1), *stats1, g1, c1, training=training))
    h = F.relu(F.batch_norm(F.conv2d(h, W2, b2, padding=1), *stats2, g2, c2, training=training))
    h = F.max_pool2d(h, 2)
    return F.cross_entropy(ad.reshape(h, (h.shape[0], -1)) @ W3.T + b3, yb)


def run_gradcheck_cnn(model, X, y):
    """ad.gradcheck of the CNN's loss (batch statistics, no dropout) w.r.t. all its parameters, on
    16 training images, in float64 whatever --dtype."""
    xb, yb = X[:16].astype(np.float64), y[:16]
    params = [p.numpy().astype(np.float64) for p in model.parameters()]
    model.eval()
    with ad.no_grad():
        same = np.isclose(cnn_loss(params, model, xb, yb, False).item(), F.cross_entropy(model(xb), yb).item(),
                          rtol=1e-5)
    model.train()
    if not same:
        raise RuntimeError("demo: the gradcheck's cnn_loss no longer computes the model's loss")
    ad.gradcheck(lambda *ps: cnn_loss(ps, model, xb, yb, True), tuple(params), n_directions=8, seed=0)
    n = sum(p.size for p in params)
    print(f"gradcheck: ad.gradcheck of the loss w.r.t. all {n:,} parameters (float64, batch statistics, 8 random "
          f"directions, central differences, 16 images): passed")


# the options a checkpoint must have been made with for a resumed run to be the same run
RUN_OPTIONS = ("model", "epochs", "hidden", "lr", "batch_size", "seed", "dtype")
# what an option was before it existed (checkpoints written then)
OPTION_DEFAULTS = {"model": "mlp"}


def load_checkpoint(path, args, model, opt, sched, rng):
    """Restore a --save checkpoint into the freshly built run; returns (epoch done, curves)."""
    ckpt = ad.load(path)
    saved = ckpt.get("options", {}) if isinstance(ckpt, dict) else {}
    differ = [k for k in RUN_OPTIONS if saved.get(k, OPTION_DEFAULTS.get(k)) != getattr(args, k)]
    if differ:
        raise SystemExit(f"--resume: {path} was made with " +
                         ", ".join(f"--{k.replace('_', '-')} {saved.get(k)}" for k in differ) +
                         "; resume with the same options")
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    rng.bit_generator.state = ckpt["rng"]
    for layer, state in zip(_dropouts(model), ckpt.get("dropout_rngs", [])):
        layer.generator.bit_generator.state = state
    return ckpt["epoch"], ckpt["curves"]


def save_checkpoint(path, args, epoch, model, opt, sched, rng, curves):
    ad.save({"options": {k: getattr(args, k) for k in RUN_OPTIONS}, "epoch": epoch, "model": model.state_dict(),
             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": rng.bit_generator.state,
             "curves": curves, "dropout_rngs": [d.generator.bit_generator.state for d in _dropouts(model)]}, path)


def _dropouts(model):
    """The dropout layers, whose generators a checkpoint keeps (a resumed run draws the same masks)."""
    return [m for m in model.modules() if isinstance(m, nn.Dropout)]


def accuracy(model, X, y):
    """In eval mode: dropout off, batch norm by its running statistics (which stay as they are)."""
    model.eval()
    try:
        with ad.no_grad():
            return float(np.mean(model(X).numpy().argmax(axis=1) == y))
    finally:
        model.train()


def main(argv=None):
    args = parse_args(argv)
    dtype = np.dtype(args.dtype)
    plt = None
    if args.plot:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print(f"--plot: matplotlib is not installed, so no plot will be written to {args.plot} "
                  f"(pip install matplotlib, or pip install 'pyautodiff[plot]')")

    X, y = load_digits()
    cnn = args.model == "cnn"
    if cnn:
        X = X.reshape(-1, 1, 8, 8)       # one channel of 8x8 pixels
    X_train, y_train, X_test, y_test = split(X.astype(dtype), y)
    print(f"pyautodiff {ad.__version__} demo: {'a CNN' if cnn else 'an MLP'} classifier for the 8x8 handwritten "
          f"digits bundled with the package")
    print(f"data: {len(X):,} images (UCI via scikit-learn, BSD-3-Clause), {len(X_train):,} for training, "
          f"{len(X_test):,} held out for testing")

    if cnn:
        model = build_cnn(args.seed, dtype)
        layout = ("1x8x8 -> Conv2d 3x3 (16) -> BatchNorm2d -> ReLU -> Conv2d 3x3 (32) -> BatchNorm2d -> ReLU -> "
                  "MaxPool2d 2 -> Dropout 0.25 -> Linear -> 10")
    else:
        model = nn.Sequential(nn.Linear(64, args.hidden, seed=args.seed, dtype=dtype), nn.ReLU(),
                              nn.Linear(args.hidden, 10, seed=args.seed + 1, dtype=dtype))
        layout = f"64 -> Linear -> ReLU ({args.hidden}) -> Linear -> 10"
    n_params = sum(p.size for p in model.parameters())
    print(f"model: {layout}, {n_params:,} parameters, {dtype}; "
          f"Adam lr={args.lr:g} (cosine decay), batch {args.batch_size}, {args.epochs} epochs, seed {args.seed}")
    (run_gradcheck_cnn if cnn else run_gradcheck)(model, X_train, y_train)
    if args.graph:
        write_graph(model, X_train[:args.batch_size], y_train[:args.batch_size], args.graph)

    opt = optim.Adam(model.parameters(), lr=args.lr)
    # cosine decay of the learning rate, stepped once per epoch: large steps early, small ones at
    # the end, so the final model does not depend on where the last noisy step happened to land
    sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.epochs)
    rng = np.random.default_rng(args.seed)
    t_forward = t_backward = t_update = 0.0
    steps = 0
    curves = {"loss": [], "train": [], "test": []}
    first = 1
    if args.resume:
        done, curves = load_checkpoint(args.resume, args, model, opt, sched, rng)
        first = done + 1
        print(f"resumed: {args.resume}, after epoch {done}")
    last = min(args.epochs, args.stop_after or args.epochs)
    clock = time.perf_counter
    for epoch in range(first, last + 1):
        order = rng.permutation(len(X_train))
        loss_sum = correct = 0.0
        t_epoch = clock()
        for start in range(0, len(order), args.batch_size):
            batch = order[start:start + args.batch_size]
            xb, yb = X_train[batch], y_train[batch]
            t0 = clock()
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            t1 = clock()
            opt.zero_grad()
            loss.backward()
            t2 = clock()
            opt.step()
            t3 = clock()
            t_forward += t1 - t0
            t_backward += t2 - t1
            t_update += t3 - t2
            steps += 1
            loss_sum += loss.item() * len(batch)
            correct += np.sum(logits.numpy().argmax(axis=1) == yb)
        elapsed = clock() - t_epoch
        train_loss, train_acc = loss_sum / len(order), correct / len(order)
        test_acc = accuracy(model, X_test, y_test)
        curves["loss"].append(train_loss)
        curves["train"].append(train_acc)
        curves["test"].append(test_acc)
        print(f"epoch {epoch:3d}/{args.epochs}  loss {train_loss:.4f}  train acc {100 * train_acc:5.1f}%  "
              f"test acc {100 * test_acc:5.1f}%  {len(order) / elapsed:9,.0f} samples/s")
        sched.step()
        if args.save:
            save_checkpoint(args.save, args, epoch, model, opt, sched, rng, curves)
    if last < args.epochs:
        print(f"stopped after epoch {last} of {args.epochs} (--stop-after)" +
              (f"; continue with --resume {args.save}" if args.save else ""))

    total = t_forward + t_backward + t_update
    print(f"time: forward {t_forward:.3f} s, backward {t_backward:.3f} s, update {t_update:.3f} s "
          f"({steps} steps, {1e6 * total / max(steps, 1):.0f} us per step)")
    if plt is not None:
        write_plot(plt, args.plot, curves)
    print(f"test accuracy: {100 * accuracy(model, X_test, y_test):.1f}%")
    return 0


def write_graph(model, xb, yb, path):
    """The graph one batch's loss records, as DOT text (.dot) or a picture (ad.viz.render)."""
    loss = F.cross_entropy(model(xb), yb)
    params = dict(model.named_parameters())
    if str(path).endswith(".dot"):
        with open(path, "w") as f:
            f.write(ad.viz.to_dot(loss, params))
    else:
        try:
            ad.viz.render(loss, path, params)
        except RuntimeError as e:
            print(f"--graph: {e}")
            return
    print(f"graph: wrote {path}")


def write_plot(plt, path, curves):
    epochs = np.arange(1, len(curves["loss"]) + 1)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(epochs, curves["loss"])
    ax1.set(xlabel="epoch", ylabel="training loss (cross-entropy)", yscale="log")
    ax2.plot(epochs, 100 * np.array(curves["train"]), label="train")
    ax2.plot(epochs, 100 * np.array(curves["test"]), label="test (held out)")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
