"""gmm: GradBench's Gaussian mixture model eval (from ADBench), gradient of the log-likelihood.

For n points x_i in d dimensions and K components with weights alpha, means mu_k and inverse
covariance factors Q_k = diag(exp(q_k)) + L_k (L_k strictly lower triangular; q_k and L_k's
entries packed in icf_k, the lower triangle column by column):

    loss = -n d/2 log(2 pi) + sum_i logsumexp_k(alpha_k + sum(q_k) - |Q_k (x_i - mu_k)|^2 / 2)
           - n logsumexp(alpha) + sum_k (gamma^2/2 (|exp(q_k)|^2 + |L_k|^2) - m sum(q_k))
           - K (n' d log(gamma / sqrt 2) - log Gamma_d(n'/2)),   n' = d + m + 1,

with GradBench's generator: x standard normal, mu uniform in [0, 1), q, L and alpha standard
normal, m = 0, gamma = 1. The gradient is with respect to alpha, mu and icf.

Every AD contestant computes the centred points in a (K, n, d) layout, Q_k (x_i - mu_k) as
centred * exp(q) plus a batched matmul by L_k^T, and logsumexp over axis 0 (the layout of
issue 15's measurements); GradBench's PyTorch tool uses an einsum. The hand-written NumPy
reference has the same forward and the analytic backward: with P the softmax over components
and G = -P Lx, d mu_k = -sum_i (G exp(q) + G L)_k, d q = sum_i G * centred * exp(q) + sum_i P
+ prior, d L_k = G_k^T centred_k (lower part), d alpha = sum_i P - n softmax(alpha).
"""

import math
import types

import numpy as np

from benchmarks import peers
from benchmarks.harness import Cell
from benchmarks.workloads import common

HAND_LABEL = "hand-written NumPy (same forward, analytic backward)"
LEAVES = ["alphas (K)", "means (K, d)", "icf (K, d + d(d-1)/2)"]
TINY = {"d": 3, "k": 2, "n": 5}
GAMMA, WISHART_M = 1.0, 0


def make_data(size):
    d, k, n = size["d"], size["k"], size["n"]
    generator = common.rng(20)
    x = generator.normal(size=(n, d))
    means = generator.uniform(size=(k, d))
    icf = np.concatenate([generator.normal(size=(k, d)),
                          generator.normal(size=(k, d * (d - 1) // 2))], axis=1)
    alphas = generator.normal(size=k)
    rows, cols = np.tril_indices(d, -1)
    order = np.lexsort((rows, cols))  # the lower triangle column by column
    rows, cols = rows[order], cols[order]
    lower_index = np.zeros((d, d), dtype=np.int64)
    lower_index[rows, cols] = d + np.arange(rows.size)
    lower_mask = np.zeros((d, d))
    lower_mask[rows, cols] = 1.0
    n_prime = d + WISHART_M + 1
    constant = (-n * d * 0.5 * math.log(2 * math.pi)
                - k * (n_prime * d * math.log(GAMMA / math.sqrt(2)) - _multigammaln(0.5 * n_prime, d)))
    return {"leaves": [alphas, means, icf], "x": x, "lower_index": lower_index,
            "lower_mask": lower_mask, "rows": rows, "cols": cols, "constant": constant}


def _multigammaln(a, p):
    return p * (p - 1) / 4 * math.log(math.pi) + sum(math.lgamma(a + (1 - j) / 2)
                                                     for j in range(1, p + 1))


def loss(L, alphas, means, icf, x3, lower_index, lower_mask, constant):
    """The objective, written once for NumPy, pyautodiff (L = ad) and torch (TorchNames);
    x3 is the points as (1, n, d)."""
    n, d = x3.shape[1], x3.shape[2]
    q = icf[:, :d]
    diagonal = L.exp(q)
    sum_q = L.sum(q, 1)
    lower = icf[:, lower_index] * lower_mask                       # (K, d, d)
    centred = x3 - means[:, None, :]                              # (K, n, d)
    mapped = centred * diagonal[:, None, :] + centred @ L.transpose(lower, (0, 2, 1))
    inner = (alphas + sum_q)[:, None] - 0.5 * L.sum(mapped * mapped, 2)   # (K, n)
    prior = L.sum(0.5 * GAMMA * GAMMA * (L.sum(diagonal * diagonal, 1)
                                         + L.sum(icf[:, d:] * icf[:, d:], 1))
                  - WISHART_M * sum_q)
    return (constant + L.sum(L.logsumexp(inner, 0)) - n * L.logsumexp(alphas, 0) + prior)


def _numpy_logsumexp(v, axis):
    m = v.max(axis=axis, keepdims=True)
    return np.squeeze(m + np.log(np.exp(v - m).sum(axis=axis, keepdims=True)), axis)


NUMPY_NAMES = types.SimpleNamespace(exp=np.exp, sum=np.sum, transpose=np.transpose,
                                    logsumexp=_numpy_logsumexp)


def _constants(data):
    return (data["x"][None], data["lower_index"], data["lower_mask"], data["constant"])


def objective(data, alphas, means, icf):
    return loss(NUMPY_NAMES, alphas, means, icf, *_constants(data))


def numpy_gradient(alphas, means, icf, data):
    x3, rows, cols, constant = data["x"][None], data["rows"], data["cols"], data["constant"]
    n, d = x3.shape[1], x3.shape[2]
    k = alphas.shape[0]
    diagonal = np.exp(icf[:, :d])
    sum_q = icf[:, :d].sum(axis=1)
    lower = np.zeros((k, d, d))
    lower[:, rows, cols] = icf[:, d:]
    centred = x3 - means[:, None, :]
    mapped = centred @ lower.transpose(0, 2, 1)
    mapped += centred * diagonal[:, None, :]
    inner = np.einsum("knd,knd->kn", mapped, mapped)
    inner *= -0.5
    inner += (alphas + sum_q)[:, None]
    top = inner.max(axis=0)
    weights = inner - top                                   # becomes P, the softmax over K
    np.exp(weights, out=weights)
    denominator = weights.sum(axis=0)
    slse = np.sum(top + np.log(denominator))
    weights /= denominator
    alpha_top = alphas.max()
    alpha_weights = np.exp(alphas - alpha_top)
    alpha_sum = alpha_weights.sum()
    prior = np.sum(0.5 * GAMMA * GAMMA * ((diagonal * diagonal).sum(axis=1)
                                          + (icf[:, d:] * icf[:, d:]).sum(axis=1))
                   - WISHART_M * sum_q)
    value = constant + slse - n * (alpha_top + np.log(alpha_sum)) + prior

    responsibility = weights.sum(axis=1)                    # d/d(alpha_k + sum q_k)
    mapped *= -weights[:, :, None]                          # G = d loss / d mapped
    d_icf = np.empty_like(icf)
    d_icf[:, :d] = (np.einsum("knd,knd->kd", mapped, centred) * diagonal
                    + responsibility[:, None] + GAMMA * GAMMA * diagonal * diagonal - WISHART_M)
    d_lower = mapped.transpose(0, 2, 1) @ centred           # (K, d, d); its lower part counts
    d_icf[:, d:] = d_lower[:, rows, cols] + GAMMA * GAMMA * icf[:, d:]
    d_centred = mapped @ lower
    d_centred += mapped * diagonal[:, None, :]
    d_means = -d_centred.sum(axis=1)
    d_alphas = responsibility - n * alpha_weights / alpha_sum
    return value, [d_alphas, d_means, d_icf]


def _variant(name, full, quick):
    def size(quick_mode):
        return dict(quick if quick_mode else full)

    def build_numpy(data, size):
        alphas, means, icf = data["leaves"]
        return Cell(lambda: numpy_gradient(alphas, means, icf, data),
                    lambda out: (float(out[0]), out[1]))

    def build_pyautodiff(data, size):
        ad = peers.load("pyautodiff")
        x3, index, mask, constant = _constants(data)
        x3, mask = ad.tensor(x3), ad.tensor(mask)
        return common.pyautodiff_cell(
            data["leaves"], lambda a, m, i: loss(ad, a, m, i, x3, index, mask, constant))

    def build_torch(data, size):
        torch = peers.load("torch")
        names = common.TorchNames(torch)
        x3, index, mask, constant = _constants(data)
        x3, index, mask = (torch.from_numpy(np.ascontiguousarray(v)) for v in (x3, index, mask))
        return common.torch_cell(
            data["leaves"], lambda a, m, i: loss(names, a, m, i, x3, index, mask, constant))

    text = lambda s: f"d={s['d']}, K={s['k']}, n={s['n']:,}"  # noqa: E731
    return types.SimpleNamespace(
        NAME=name,
        TITLE=f"GradBench gmm: gradient of the log-likelihood, {text(full)} "
              f"(quick: {text(quick)})",
        PER_OP=False,
        HAND_LABEL=HAND_LABEL,
        LEAVES=LEAVES,
        ISOLATED=set(),
        NOT_APPLICABLE=common.GRADBENCH_NOT_WRITTEN,
        TARGETS=common.gradbench_targets(numpy_bound=1.5),
        NOTES=[],
        BUILDERS={"numpy": build_numpy, "pyautodiff": build_pyautodiff, "torch": build_torch},
        TINY=TINY,
        size=size,
        n_ops=lambda size: None,
        make_data=make_data,
        objective=objective,
    )


VARIANTS = {
    "gmm_d2_k5": _variant("gmm_d2_k5", {"d": 2, "k": 5, "n": 1000}, {"d": 2, "k": 5, "n": 200}),
    "gmm_d10_k25": _variant("gmm_d10_k25", {"d": 10, "k": 25, "n": 10_000},
                            {"d": 4, "k": 5, "n": 500}),
}
