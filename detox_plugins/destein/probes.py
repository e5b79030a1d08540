"""Per-(layer, head) logistic-regression probes and top-k head selection (the released code never applied its mask).

One L2 logistic regression per (layer, head) separates toxic (1) from non-toxic (0) activations
of that head's slice: scikit-learn's ``LogisticRegression(C=1, max_iter=1000)`` as released
(``solver: sklearn``), or the same objective solved for all heads at once by a batched damped
Newton method in torch (``solver: newton``, the default; ~20x faster, same optimum). The split
is by PAIR, so both sides of a pair are always in the same split; the held-out accuracy is the
head's coefficient.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from registry.errors import EditError, HyperParamsError

from .hparams import ProbeConfig

logger = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    """Held-out accuracy ``acc`` [L, H] and the held-out mean probability of the true class ``score``."""

    acc: Any
    score: Any
    train_pairs: list[int]
    val_pairs: list[int]


def split_pairs(num_pairs: int, config: ProbeConfig, seed: int) -> tuple[list[int], list[int]]:
    """Pair indices for training and validation (pair_order: first pairs train, as released)."""
    import numpy as np

    num_train = int(num_pairs * config.train_frac)
    if num_train < 1 or num_train >= num_pairs:
        raise HyperParamsError(
            f"probe.train_frac={config.train_frac} with {num_pairs} pairs leaves {num_train} training and "
            f"{num_pairs - num_train} held-out pairs; both must be >= 1: use more pairs (pairs.num_pairs) "
            f"or set probe.kind: none")
    order = list(range(num_pairs))
    if config.split == "random":
        order = [int(i) for i in np.random.default_rng(seed).permutation(num_pairs)]
    return order[:num_train], order[num_train:]


def fit_head_probes(toxic: Any, nontoxic: Any, num_heads: int, config: ProbeConfig, *,
                    seed: int = 42, progress: bool = False) -> ProbeResult:
    """Fit the probes on ``toxic``/``nontoxic`` activations [m, L, D] (D split into ``num_heads`` slices)."""
    import numpy as np
    import torch

    if toxic.shape != nontoxic.shape or toxic.dim() != 3:
        raise EditError(f"probe inputs must both be [m, L, D], got {tuple(toxic.shape)} and {tuple(nontoxic.shape)}")
    num_pairs, num_layers, dim = toxic.shape
    if dim % num_heads:
        raise EditError(f"activation width {dim} is not divisible by num_heads={num_heads}")
    head_dim = dim // num_heads
    train, val = split_pairs(num_pairs, config, seed)
    # [units = L*H, rows, d_h] in float64 (probes are offline; the steering itself never uses float64)
    tox = toxic.double().reshape(num_pairs, num_layers * num_heads, head_dim).transpose(0, 1)
    non = nontoxic.double().reshape(num_pairs, num_layers * num_heads, head_dim).transpose(0, 1)
    shuffle = torch.from_numpy(np.random.default_rng(seed).permutation(2 * len(train)))
    x_train = torch.cat([tox[:, train], non[:, train]], dim=1)[:, shuffle]
    y_train = torch.cat([torch.ones(len(train)), torch.zeros(len(train))]).double()[shuffle]
    x_val = torch.cat([tox[:, val], non[:, val]], dim=1)
    y_val = torch.cat([torch.ones(len(val)), torch.zeros(len(val))]).double()
    if config.solver == "sklearn":
        proba_val = _fit_sklearn(x_train, y_train, x_val, config, progress)
    else:
        weights, bias = fit_logistic_newton(x_train, y_train, C=config.C, max_iter=min(config.max_iter, 100))
        proba_val = torch.sigmoid(torch.einsum("und,ud->un", x_val, weights) + bias[:, None])
    predicted = (proba_val > 0.5).double()
    acc = (predicted == y_val).double().mean(1)
    score = torch.where(y_val == 1, proba_val, 1.0 - proba_val).mean(1)
    acc = acc.reshape(num_layers, num_heads).float()
    score = score.reshape(num_layers, num_heads).float()
    logger.info("probes: mean held-out accuracy %.3f (max %.3f) over %d heads", float(acc.mean()),
                float(acc.max()), acc.numel())
    return ProbeResult(acc=acc, score=score, train_pairs=train, val_pairs=val)


def fit_logistic_newton(x: Any, y: Any, *, C: float = 1.0, max_iter: int = 100, tol: float = 1e-12) -> tuple[Any, Any]:
    """Many L2 logistic regressions at once, scikit-learn's objective, solved by damped Newton.

    Minimises ``½‖w‖² + C Σ_i log(1 + exp(−s_i (x_i·w + b)))`` (intercept unpenalised), the
    problem ``LogisticRegression(penalty='l2', C=C)`` solves with lbfgs, for every unit at once.
    ``x`` is [U, n, d], ``y`` [n] in {0, 1}. Returns (w [U, d], b [U]) in float64.
    """
    import torch
    import torch.nn.functional as F

    x = x.double()
    y = y.double()
    units, rows, dim = x.shape
    xa = torch.cat([x, torch.ones(units, rows, 1, dtype=x.dtype)], dim=-1)
    reg = torch.ones(dim + 1, dtype=x.dtype)
    reg[-1] = 0.0
    theta = torch.zeros(units, dim + 1, dtype=x.dtype)

    def objective(t: Any) -> Any:
        z = torch.bmm(xa, t.unsqueeze(-1)).squeeze(-1)
        return C * (F.softplus(z) - y * z).sum(-1) + 0.5 * (reg * t * t).sum(-1)

    ridge = torch.diag(reg + 1e-10)
    value = objective(theta)
    for _ in range(max_iter):
        z = torch.bmm(xa, theta.unsqueeze(-1)).squeeze(-1)
        p = torch.sigmoid(z)
        grad = C * torch.bmm((p - y).unsqueeze(1), xa).squeeze(1) + reg * theta
        hess = torch.bmm((xa * (C * p * (1 - p)).unsqueeze(-1)).transpose(1, 2), xa) + ridge
        step = torch.linalg.solve(hess, grad.unsqueeze(-1)).squeeze(-1)
        decrease = (grad * step).sum(-1)  # the squared Newton decrement
        active = decrease > tol * (1.0 + value.abs())
        if not bool(active.any()):
            break
        step = step * active.unsqueeze(-1)
        size = torch.ones(units, dtype=x.dtype)
        for _ in range(40):  # backtracking (Armijo), per unit; converged units stay put
            trial = objective(theta - size[:, None] * step)
            ok = (trial <= value - 1e-4 * size * decrease) | ~active
            if bool(ok.all()):
                break
            size = torch.where(ok, size, size * 0.5)
        theta = theta - size[:, None] * step
        value = objective(theta)
    return theta[:, :dim], theta[:, dim]


def _fit_sklearn(x_train: Any, y_train: Any, x_val: Any, config: ProbeConfig, progress: bool) -> Any:
    """Held-out P(toxic) [U, n_val] from one scikit-learn LogisticRegression per unit (the released way)."""
    import warnings

    import torch
    from tqdm.auto import tqdm

    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise EditError(f"probe.solver 'sklearn' needs scikit-learn ({exc}); pip install scikit-learn, "
                        f"or set probe.solver: newton") from None
    xt, yt, xv = x_train.numpy(), y_train.numpy(), x_val.numpy()
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for unit in tqdm(range(xt.shape[0]), desc="probes", disable=not progress):
            clf = LogisticRegression(C=config.C, max_iter=config.max_iter)
            clf.fit(xt[unit], yt)
            out.append(torch.from_numpy(clf.predict_proba(xv[unit])[:, 1]))
    return torch.stack(out)


def top_k_mask(acc: Any, k: int, score: Any = None) -> Any:
    """[L, H] 0/1 float mask of the ``k`` best units by held-out accuracy (ties: ``score``, then index)."""
    import torch

    flat = acc.reshape(-1).double()
    if not 1 <= k <= flat.numel():
        raise HyperParamsError(f"probe.top_k must be in 1..{flat.numel()} (layers × heads), got {k}; fix probe.top_k")
    accs = flat.tolist()
    scores = score.reshape(-1).tolist() if score is not None else [0.0] * len(accs)
    order = sorted(range(len(accs)), key=lambda i: (-accs[i], -scores[i], i))
    mask = torch.zeros(flat.numel(), dtype=torch.float32)
    mask[order[:k]] = 1.0
    return mask.reshape(acc.shape)


def head_weights(acc: Any, weight: str, mask: Any = None) -> Any:
    """The head coefficient p [L, H]: 1 + acc, acc or 1, times the mask where one is given."""
    import torch

    if weight == "one_plus_acc":
        p = 1.0 + acc.float()
    elif weight == "acc":
        p = acc.float().clone()
    elif weight == "binary":
        p = torch.ones_like(acc, dtype=torch.float32)
    else:
        raise HyperParamsError(f"unknown probe.weight {weight!r}; choose one_plus_acc, acc or binary")
    return p if mask is None else p * mask.float()
