"""Sinkhorn-Knopp solver for the SeLa equal-partition label assignment.

Self-labelling (Asano et al., 2020) assigns pseudo-labels by solving an
entropy-regularised optimal-transport problem between samples and clusters:

    min_Q  <Q, -log softmax(logits)> - (1 / lamb) H(Q)
    s.t.   Q 1 = 1 / N,   Q^T 1 = w,

whose solution is ``Q = diag(a) P**lamb diag(b)`` with ``P = softmax(logits)``.
It is found with Sinkhorn-Knopp matrix scaling (Cuturi, 2013).
"""

from __future__ import annotations

import math
import numbers
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["SinkhornResult", "sinkhorn_equipartition"]

# Row chunks this large stay in L2 cache between the two matvecs of a fused
# Sinkhorn sweep, so the kernel is streamed from memory once per iteration.
_CHUNK_BYTES = 1 << 20
# Column scalings are kept within exp(+-limit) and then absorbed into the
# kernel, so that float32 row sums and their reciprocals never overflow.
_ABSORB_LOG = {torch.float32: 30.0, torch.float64: 200.0}
# Anderson acceleration: number of past iterates mixed, error growth factor
# that rejects an extrapolated iterate, and rejections before falling back to
# plain Sinkhorn for good.
_AA_MEMORY = 8
_AA_GUARD = 10.0
_AA_MAX_RESETS = 5


@dataclass(frozen=True)
class SinkhornResult:
    """Outcome of :func:`sinkhorn_equipartition`.

    Attributes
    ----------
    labels : ndarray or Tensor of int64, shape (n_samples,) or (n_heads, n_samples)
        Hard assignment ``argmax_j Q_ij``; same array type and device as the input.
    n_iter : int
        Number of Sinkhorn sweeps performed (maximum over heads).
    converged : bool
        Whether ``marginal_error <= tol`` was reached (for every head).
    marginal_error : float
        ``max_j |m_j - w_j| / w_j`` where ``m`` are the cluster masses of Q with
        its rows normalised exactly; maximum over heads.
    state : ndarray or Tensor of float64, shape (n_clusters,) or (n_heads, n_clusters)
        Log column scalings, to be passed back as ``init`` for a warm start.
    q : ndarray or Tensor or None
        Soft assignment Q (summing to one per head) if ``return_q`` was set.
    log : ndarray of float64, shape (n_iter,)
        Marginal error after each sweep (for several heads, the maximum over
        heads, a finished head contributing its final error).
    """

    labels: Any
    n_iter: int
    converged: bool
    marginal_error: float
    state: Any
    q: Any | None
    log: np.ndarray


def sinkhorn_equipartition(
    logits: np.ndarray | torch.Tensor,
    *,
    lamb: float = 25.0,
    cluster_weights: np.ndarray | torch.Tensor | None = None,
    tol: float = 1e-3,
    max_iter: int = 1000,
    init: np.ndarray | torch.Tensor | None = None,
    return_q: bool = False,
) -> SinkhornResult:
    """Assign samples to clusters under an equal-partition constraint.

    Parameters
    ----------
    logits : ndarray or Tensor of shape (n_samples, n_clusters) or (n_heads, n_samples, n_clusters)
        Network outputs (float32 or float64; a torch tensor may live on any
        device and the computation then runs there). Heads are solved
        independently. The problem is invariant to adding a constant per row.
    lamb : float, default=25.0
        Inverse entropic regularisation; ``Q ∝ softmax(logits) ** lamb`` up to
        row and column scalings. Larger values give harder assignments.
    cluster_weights : array-like of shape (n_clusters,), default=None
        Positive target cluster sizes, normalised to sum to one. Uniform if None.
    tol : float, default=1e-3
        Stop once the relative cluster-mass error ``marginal_error <= tol``.
    max_iter : int, default=1000
        Maximum number of Sinkhorn sweeps (per head).
    init : array-like of shape (n_clusters,) or (n_heads, n_clusters), default=None
        ``state`` of a previous result, to warm-start from its column scalings.
    return_q : bool, default=False
        Also return the soft assignment Q.

    Returns
    -------
    result : SinkhornResult
        Labels, convergence information, warm-start state and optional Q.

    Raises
    ------
    ValueError
        On non-finite, empty or wrongly shaped input, or invalid parameters.

    References
    ----------
    .. [1] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal
       Transport", NeurIPS 2013.
    .. [2] Y. M. Asano, C. Rupprecht, A. Vedaldi, "Self-labelling via
       simultaneous clustering and representation learning", ICLR 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_selflabel.sinkhorn import sinkhorn_equipartition
    >>> logits = np.random.default_rng(0).normal(size=(1000, 10)).astype(np.float32)
    >>> res = sinkhorn_equipartition(logits, lamb=25.0)
    >>> res.converged, res.labels.dtype, res.labels.shape
    (True, dtype('int64'), (1000,))
    >>> bool(np.bincount(res.labels, minlength=10).min() > 50)
    True
    """
    x, is_numpy = _as_tensor(logits)
    if x.ndim not in (2, 3):
        raise ValueError(
            f"logits must be 2-D (n_samples, n_clusters) or 3-D (n_heads, n_samples, "
            f"n_clusters), got shape {tuple(x.shape)}"
        )
    if x.numel() == 0:
        raise ValueError(f"logits must be non-empty, got shape {tuple(x.shape)}")
    lamb = _check_positive_float(lamb, "lamb")
    tol = _check_positive_float(tol, "tol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    batched = x.ndim == 3
    heads = x if batched else x.unsqueeze(0)
    n_heads, _, n_clusters = heads.shape
    log_w = _check_weights(cluster_weights, n_clusters)
    init_arr = _check_init(init, n_heads, n_clusters, batched)

    with ThreadPoolExecutor(_n_workers(x)) as pool:
        outs = [
            _solve_head(
                head,
                lamb,
                log_w,
                tol,
                int(max_iter),
                None if init_arr is None else init_arr[h],
                return_q,
                pool if _n_workers(x) > 1 else None,
            )
            for h, head in enumerate(heads)
        ]
    n_iter = max(o.n_iter for o in outs)
    # Pad finished heads with their final error so the log reads "max over heads".
    log = np.max([np.pad(o.log, (0, n_iter - o.n_iter), mode="edge") for o in outs], axis=0)
    labels = torch.stack([o.labels for o in outs])
    state = np.stack([o.state for o in outs])
    q = torch.stack([o.q for o in outs]) if return_q else None
    if not batched:
        labels, state = labels[0], state[0]
        q = None if q is None else q[0]
    if is_numpy:
        labels = labels.numpy()
        q = None if q is None else q.numpy()
    else:
        state = torch.from_numpy(state).to(x.device)
    return SinkhornResult(
        labels=labels,
        n_iter=n_iter,
        converged=all(o.converged for o in outs),
        marginal_error=max(o.marginal_error for o in outs),
        state=state,
        q=q,
        log=log,
    )


@dataclass(frozen=True)
class _HeadResult:
    labels: torch.Tensor
    n_iter: int
    converged: bool
    marginal_error: float
    state: np.ndarray
    q: torch.Tensor | None
    log: np.ndarray


def _solve_head(
    logits: torch.Tensor,
    lamb: float,
    log_w: np.ndarray,
    tol: float,
    max_iter: int,
    init: np.ndarray | None,
    return_q: bool,
    pool: ThreadPoolExecutor | None,
) -> _HeadResult:
    n_samples = logits.shape[0]
    chunks = _row_chunks(logits)
    n_groups = min(len(chunks), _n_workers(logits) if pool is not None else 1)
    bounds = np.linspace(0, len(chunks), n_groups + 1).astype(int)
    groups = [chunks[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    limit = _ABSORB_LOG[logits.dtype]
    # x: log column scaling (the dual potential); g: the part absorbed into the kernel.
    x = np.zeros_like(log_w) if init is None else init - init.mean()
    g = x.copy()
    kernel = torch.empty_like(logits)
    _fill_kernel(kernel, logits, lamb, g, chunks, check=True)
    accel = _Anderson(_AA_MEMORY)
    errors: list[float] = []
    converged = False
    for _ in range(max_iter):
        shift = x - g
        shift -= shift.mean()
        if np.abs(shift).max() > limit:
            g = x.copy()
            _fill_kernel(kernel, logits, lamb, g, chunks)
            shift[:] = 0.0
        c = torch.from_numpy(np.exp(shift)).to(device=logits.device, dtype=logits.dtype)
        col = _sweep(kernel, c, groups, pool)
        mass = c.double().cpu().numpy() * col / n_samples
        with np.errstate(divide="ignore", invalid="ignore"):
            log_mass = np.log(mass)
        if not np.isfinite(log_mass).all():
            # Whole columns of the kernel underflowed: recompute exactly in the log domain.
            log_mass = _log_col_mass(logits, lamb, x, chunks)
        resid = log_w - log_mass
        err = float(np.abs(np.expm1(-resid)).max())
        errors.append(err)
        if err <= tol:
            converged = True
            break
        x = accel.step(x, resid, err)
    del kernel

    state = x - x.mean()
    labels = torch.empty(n_samples, dtype=torch.int64, device=logits.device)
    q = torch.empty_like(logits) if return_q else None
    pot = _as_pot(state, logits)
    for lo, hi in chunks:
        z = _scores(logits[lo:hi], lamb, pot)
        labels[lo:hi] = z.argmax(dim=1)
        if q is not None:
            q[lo:hi] = torch.softmax(z, dim=1).div_(n_samples)
    return _HeadResult(
        labels=labels,
        n_iter=len(errors),
        converged=converged,
        marginal_error=errors[-1],
        state=state,
        q=q,
        log=np.asarray(errors),
    )


class _Anderson:
    """Safeguarded Anderson acceleration of the Sinkhorn map ``x -> x + f(x)``.

    Sinkhorn is a fixed-point iteration on the column potential whose
    contraction is slow for confident logits; Anderson mixing of the last few
    iterates extrapolates along the slow directions (Walker & Ni, 2011). An
    extrapolated iterate that makes the error blow up is discarded in favour of
    a plain Sinkhorn step from the best iterate, which always makes progress.
    """

    def __init__(self, memory: int) -> None:
        self.memory = memory
        self.xs: list[np.ndarray] = []
        self.fs: list[np.ndarray] = []
        self.best: tuple[float, np.ndarray, np.ndarray] = (math.inf, np.empty(0), np.empty(0))
        self.resets = 0

    def step(self, x: np.ndarray, f: np.ndarray, err: float) -> np.ndarray:
        if self.resets >= _AA_MAX_RESETS:
            return x + f
        best_err, best_x, best_f = self.best
        if err > _AA_GUARD * best_err or not np.isfinite(f).all():
            self.resets += 1
            self.xs.clear()
            self.fs.clear()
            return best_x + best_f
        if err < best_err:
            self.best = (err, x, f)
        self.xs.append(x)
        self.fs.append(f)
        if len(self.xs) > self.memory + 1:
            del self.xs[0], self.fs[0]
        if len(self.xs) < 2:
            return x + f
        d_x = np.diff(np.stack(self.xs), axis=0)
        d_f = np.diff(np.stack(self.fs), axis=0)
        gamma = np.linalg.lstsq(d_f.T, f, rcond=None)[0]
        return x + f - (d_x + d_f).T @ gamma


def _sweep(
    kernel: torch.Tensor,
    c: torch.Tensor,
    groups: list[list[tuple[int, int]]],
    pool: ThreadPoolExecutor | None,
) -> np.ndarray:
    """Column sums ``K^T (1 / (K c))``: a row update plus a column reduction.

    Row groups run in parallel threads (torch releases the GIL), because
    per-block products are too small for torch's own intra-op threading.
    """
    if pool is None or len(groups) == 1:
        parts = [_sweep_rows(kernel, c, group) for group in groups]
    else:
        parts = list(pool.map(lambda group: _sweep_rows(kernel, c, group), groups))
    return sum(part.cpu().numpy() for part in parts)


def _sweep_rows(
    kernel: torch.Tensor, c: torch.Tensor, chunks: list[tuple[int, int]]
) -> torch.Tensor:
    col = torch.zeros(kernel.shape[1], dtype=torch.float64, device=kernel.device)
    for lo, hi in chunks:
        # Both products read the same block while it is still in cache.
        block = kernel[lo:hi]
        r = torch.mv(block, c).reciprocal_()
        # float64 accumulation keeps the error estimate exact enough for N ~ 1e6.
        col += torch.mv(block.t(), r)
    return col


def _as_pot(pot: np.ndarray, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.from_numpy(pot).to(device=like.device, dtype=dtype or like.dtype)


def _scores(logits: torch.Tensor, lamb: float, pot: torch.Tensor) -> torch.Tensor:
    """``lamb * (logits - rowmax) + pot``, i.e. log Q up to a per-row constant."""
    z = logits.to(pot.dtype)
    z = z - z.amax(dim=1, keepdim=True)
    return z.mul_(lamb).add_(pot)


def _fill_kernel(
    kernel: torch.Tensor,
    logits: torch.Tensor,
    lamb: float,
    pot: np.ndarray,
    chunks: list[tuple[int, int]],
    check: bool = False,
) -> None:
    """Write ``exp(scores - rowmax)`` into ``kernel``; every row has maximum 1."""
    pot_t = _as_pot(pot, logits)
    for lo, hi in chunks:
        block = logits[lo:hi]
        # Checked here, while the block is in cache, rather than in a separate pass.
        if check and not bool(torch.isfinite(block).all()):
            raise ValueError("logits contain NaN or infinite values")
        z = _scores(block, lamb, pot_t)
        kernel[lo:hi] = z.sub_(z.amax(dim=1, keepdim=True)).exp_()


def _log_col_mass(
    logits: torch.Tensor, lamb: float, pot: np.ndarray, chunks: list[tuple[int, int]]
) -> np.ndarray:
    """Log cluster masses of Q with exactly normalised rows, without underflow."""
    pot_t = _as_pot(pot, logits, torch.float64)
    out = torch.full_like(pot_t, -math.inf)
    for lo, hi in chunks:
        z = _scores(logits[lo:hi], lamb, pot_t)
        z -= torch.logsumexp(z, dim=1, keepdim=True)
        out = torch.logaddexp(out, torch.logsumexp(z, dim=0))
    return out.cpu().numpy() - math.log(logits.shape[0])


def _row_chunks(x: torch.Tensor) -> list[tuple[int, int]]:
    n_rows, n_cols = x.shape
    if x.device.type != "cpu":
        # On accelerators kernel-launch overhead dominates; use whole-matrix ops.
        return [(0, n_rows)]
    step = max(1, _CHUNK_BYTES // (n_cols * x.element_size()))
    return [(lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]


def _as_tensor(logits: Any) -> tuple[torch.Tensor, bool]:
    """Torch view of the input (sharing numpy memory) and whether it was numpy."""
    is_numpy = not isinstance(logits, torch.Tensor)
    if is_numpy:
        arr = np.asarray(logits)
        if arr.dtype.kind not in "fiu":
            raise ValueError(f"logits must be a real numeric array, got dtype {arr.dtype}")
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64 if arr.dtype.kind in "iu" else np.float32)
        arr = np.ascontiguousarray(arr)
        with warnings.catch_warnings():
            # Read-only arrays are fine: the logits are never written to.
            warnings.simplefilter("ignore", UserWarning)
            x = torch.from_numpy(arr)
    else:
        x = logits.detach()
        if x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"logits must be a real numeric tensor, got dtype {x.dtype}")
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32 if x.is_floating_point() else torch.float64)
        x = x.contiguous()
    return x, is_numpy


def _check_positive_float(value: Any, name: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}") from None
    if not (math.isfinite(out) and out > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return out


def _to_float64(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array: {exc}") from None


def _check_weights(weights: Any, n_clusters: int) -> np.ndarray:
    """Log of the normalised cluster weights."""
    if weights is None:
        return np.full(n_clusters, -math.log(n_clusters))
    w = _to_float64(weights, "cluster_weights")
    if w.shape != (n_clusters,):
        raise ValueError(
            f"cluster_weights must have shape ({n_clusters},) to match logits, got {w.shape}"
        )
    if not np.isfinite(w).all():
        raise ValueError("cluster_weights must be finite")
    if not (w > 0).all():
        raise ValueError("cluster_weights must be strictly positive")
    return np.log(w / w.sum())


def _check_init(init: Any, n_heads: int, n_clusters: int, batched: bool) -> np.ndarray | None:
    if init is None:
        return None
    arr = _to_float64(init, "init")
    expected = (n_heads, n_clusters) if batched else (n_clusters,)
    if arr.shape != expected:
        raise ValueError(
            f"init must have shape {expected} (a previous result's state), got {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise ValueError("init must be finite")
    return arr.reshape(n_heads, n_clusters)


def _n_workers(logits: torch.Tensor) -> int:
    return torch.get_num_threads() if logits.device.type == "cpu" else 1
