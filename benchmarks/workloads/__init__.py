"""The workloads, in report order. Each module defines one workload for every contestant."""

import importlib

NAMES = [
    "scalar_chain",
    "micrograd_mlp",
    "small_mlp",
    "big_elementwise",
    "matmul_chain",
    "broadcast_reduce",
    "deep_chain",
    "deep_chain_1e6",
    "jacobian_fwd",
    "jacobian_rev",
    "kmeans",
    "hessian_compose_jac",
    "hessian_compose_hvp_fwd",
    "hessian_compose_hvp_rev",
    "gmm_d2_k5",
    "gmm_d10_k25",
    "lstm",
    "lse",
    "llsq",
    "ode",
    "det",
]

# Workloads that live in another workload's module (one file holds a family side by side).
_MODULES = {"deep_chain_1e6": "deep_chain", "jacobian_fwd": "jacobian", "jacobian_rev": "jacobian",
            "hessian_compose_jac": "hessian_compose",
            "hessian_compose_hvp_fwd": "hessian_compose",
            "hessian_compose_hvp_rev": "hessian_compose",
            "gmm_d2_k5": "gmm", "gmm_d10_k25": "gmm"}


def load(name):
    module = importlib.import_module(f"benchmarks.workloads.{_MODULES.get(name, name)}")
    return getattr(module, "VARIANTS", {}).get(name, module)


def select(only):
    """Workload names matching a comma-separated list; a name also selects its family
    (``jacobian`` selects jacobian_fwd and jacobian_rev; ``deep_chain`` both chain lengths)."""
    if not only:
        return list(NAMES)
    wanted = [part.strip() for part in only.split(",") if part.strip()]
    unknown = [w for w in wanted if not any(n == w or n.startswith(w + "_") for n in NAMES)]
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    return [n for n in NAMES if any(n == w or n.startswith(w + "_") for w in wanted)]

