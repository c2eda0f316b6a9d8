"""Train a small classifier on the handwritten digits bundled with pyautodiff: the model of
`python -m pyautodiff.demo`, written the way a user would write it."""
import numpy as np

import pyautodiff as ad
from pyautodiff import nn, optim
from pyautodiff.nn import functional as F

X, y = ad.data.load_digits()                      # (1797, 64) in [0, 1], labels 0..9
rng = np.random.default_rng(0)
order = rng.permutation(len(X))
test, train = order[:360], order[360:]

model = nn.Sequential(nn.Linear(64, 64, seed=1), nn.ReLU(), nn.Linear(64, 10, seed=2))
opt = optim.Adam(model.parameters(), lr=1e-2)


def accuracy(idx):
    with ad.no_grad():                            # evaluation records nothing
        return np.mean(model(X[idx]).numpy().argmax(axis=1) == y[idx])


for epoch in range(15):
    rng.shuffle(train)
    for start in range(0, len(train), 32):
        batch = train[start:start + 32]
        loss = F.cross_entropy(model(X[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    print(f"epoch {epoch + 1:2d}  last batch loss {loss.item():.4f}  test accuracy {100 * accuracy(test):.1f}%")

print(f"final test accuracy: {100 * accuracy(test):.1f}%")
