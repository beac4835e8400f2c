"""Sinkhorn-Knopp solver for the SeLa equal-partition label assignment.

Self-labelling (Asano et al., 2020) assigns pseudo-labels by solving an
entropy-regularised optimal-transport problem between samples and clusters:

    min_Q  <Q, -log softmax(logits)> - (1 / lamb) H(Q)
    s.t.   Q 1 = 1 / N,   Q^T 1 = w,

whose solution is ``Q = diag(a) P**lamb diag(b)`` with ``P = softmax(logits)``.
It is found with Sinkhorn-Knopp matrix scaling (Cuturi, 2013), organised for
speed and memory on large N:

* the kernel ``exp(lamb * (logits - rowmax))`` is built once in the input's
  dtype; each sweep updates the row scaling and reduces the columns block by
  block, so the kernel is read from memory once per iteration;
* the sweeps are a fixed-point iteration on the K column potentials, which is
  extrapolated with safeguarded Anderson acceleration (Walker & Ni, 2011);
* near the solution (and for warm starts), or when Anderson stalls on an
  ill-conditioned problem, up to 128 clusters switch to Newton's method
  on the concave dual with a backtracking line search: its K x K Hessian is
  summed over the rows that are not already assigned with certainty, in the same
  pass over the kernel, and it converges quadratically where Sinkhorn crawls;
* column scalings are absorbed into the kernel before they can overflow, and a
  cluster whose kernel column underflowed gets its mass from an exact
  log-domain pass (Schmitzer, 2019).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["SinkhornResult", "sinkhorn_equipartition"]

_T = TypeVar("_T")

# Bytes of a row chunk of a fused sweep: it stays in L2 cache between the sweep's two matvecs.
_CHUNK_BYTES = 1 << 20
# Log column scalings beyond +-this are absorbed into the kernel: float32 row sums never overflow.
_ABSORB_LOG = {torch.float32: 35.0, torch.float64: 250.0}
# Log-kernel floor, just above the smallest normal number: subnormals are slow, and the floor is
# negligible (at most exp(floor + 2 * limit) of any row sum). The online label step shares it.
LOG_FLOOR = {torch.float32: -86.0, torch.float64: -706.0}
# Cluster masses within this factor of what the floor alone gives: recomputed in the log domain.
_FLOOR_MARGIN = 1e6
# Spread of the column potential beyond which float32 scores lose precision: computed in float64.
_F32_POT_SPREAD = 200.0
# Anderson acceleration: past iterates that it mixes,
_AA_MEMORY = 8
# the error growth that rejects an extrapolated iterate,
_AA_GUARD = 10.0
# the rejections after which plain Sinkhorn goes on for good,
_AA_MAX_RESETS = 5
# and the ridge, relative to the Gram matrix's trace, that keeps its mixing solve regular.
_AA_RIDGE = 1e-8
# Newton's method for at most this many clusters: its Hessian costs O(K^2) a row, its solve O(K^3).
_NEWTON_MAX_CLUSTERS = 128
# Newton steps start at this marginal error (at once from a warm start).
_NEWTON_ERR = 0.3
# Rows with |p|^2 above this (nearly one-hot) add next to nothing to the Hessian: left out.
_NEWTON_SURE = 0.99
# Largest move of a potential per Newton step (e^10 in scaling).
_NEWTON_MAX_STEP = 10.0
# Damping, times the target sizes, that keeps the step of clusters without uncertain rows finite.
_NEWTON_DAMPING = 1e-6
# Line-search rejections after which Newton hands back to Sinkhorn: near hard rows its dual is
# flat between row flips and its steps overshoot, where Sinkhorn still progresses.
_NEWTON_MAX_REJECTIONS = 3
# Armijo's sufficient-increase constant of the line search.
_ARMIJO = 1e-4
# Step fraction below which the line search gives up and restarts from where it stands.
_MIN_STEP = 1e-6
# Ulps of the largest score within which the dual's value is noise (it adds rounded row maxima).
_VALUE_ULPS = 4.0


@dataclass(frozen=True)
class SinkhornResult:
    """Outcome of :func:`sinkhorn_equipartition`.

    Attributes
    ----------
    labels : ndarray or Tensor of int64, shape (n_samples,) or (n_heads, n_samples)
        Hard assignment ``argmax_j Q_ij``; same array type and device as the input.
    n_iter : int
        Number of iterations, i.e. passes over the data that each evaluate the
        marginal error, the first at the initial point (maximum over heads).
        Most are Sinkhorn sweeps; Newton iterations also form a Hessian.
    converged : bool
        Whether ``marginal_error <= tol`` was reached (for every head).
    marginal_error : float
        ``max_j |m_j - w_j| / w_j`` where ``m`` are the cluster masses of the
        returned Q (rows normalised exactly, so it does not depend on N);
        maximum over heads.
    state : ndarray or Tensor of float64, shape (n_clusters,) or (n_heads, n_clusters)
        Log column scalings ``log b`` (centred: a constant is absorbed by the
        rows), to be passed back as ``init`` for a warm start. A tensor on the
        input's device for torch input.
    q : ndarray or Tensor or None
        Soft assignment Q (summing to one per head) if ``return_q`` was set.
    log : ndarray of float64, shape (n_iter,)
        Marginal error at each iteration (for several heads, the maximum over
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
    newton: bool = True,
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
    cluster_weights : array-like of shape (n_clusters,) or (n_heads, n_clusters), default=None
        Positive target cluster sizes, normalised to sum to one (per head). Uniform if None.
        The 2-D form, for 3-D ``logits``, gives each head its own sizes.
    tol : float, default=1e-3
        Stop once the relative cluster-mass error ``marginal_error <= tol``.
    max_iter : int, default=1000
        Maximum number of iterations (per head).
    init : array-like of shape (n_clusters,) or (n_heads, n_clusters), default=None
        ``state`` of a previous result, to warm-start from its column scalings.
        A warm start that already meets ``tol`` takes one iteration; otherwise
        it goes straight to Newton steps (for up to 128 clusters).
    return_q : bool, default=False
        Also return the soft assignment Q.
    newton : bool, default=True
        Take Newton steps near the solution (for up to 128 clusters); ``False`` iterates
        Sinkhorn with Anderson acceleration only.

    Returns
    -------
    result : SinkhornResult
        Labels, convergence information, warm-start state and optional Q.

    Raises
    ------
    ValueError
        On non-finite, empty or wrongly shaped input, or invalid parameters.

    Notes
    -----
    Labels need no Q: ``argmax_j Q_ij = argmax_j (lamb * logits_ij + log b_j)``.

    The column potential ``x = log b`` maximises the concave dual
    ``F(x) = w.x - mean_i log sum_j exp(lamb * logits_ij + x_j)``, whose gradient
    is the marginal residual and whose Hessian is ``-(1/N) sum_i (diag(p_i) - p_i p_i^T)``
    with ``p_i`` the rows of NQ. Far from the solution the solver iterates
    Sinkhorn with Anderson acceleration; once the error is below 0.3, or when
    Anderson stalls (a confident network makes Sinkhorn contract very slowly), it
    takes Newton steps on F with an Armijo line search, which converge in a few
    iterations from a nearby point such as a warm start.

    Besides the outputs, memory use is one kernel buffer the size of one head's
    logits (in their dtype) plus O(n_samples + cache-sized blocks); numpy
    input is not copied unless it is non-contiguous or not float32/float64.
    On an accelerator, where a block is a whole head, Newton iterations take a
    second such buffer.
    On CPU, row blocks are shared among ``torch.get_num_threads()`` threads.

    References
    ----------
    .. [1] M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal
       Transport", NeurIPS 2013.
    .. [2] Y. M. Asano, C. Rupprecht, A. Vedaldi, "Self-labelling via
       simultaneous clustering and representation learning", ICLR 2020.
    .. [3] H. F. Walker, P. Ni, "Anderson Acceleration for Fixed-Point
       Iterations", SIAM J. Numer. Anal. 49(4), 2011.
    .. [4] B. Schmitzer, "Stabilized Sparse Scaling Algorithms for Entropy
       Regularized Transport Problems", SIAM J. Sci. Comput. 41(3), 2019.
    .. [5] J. Nocedal, S. J. Wright, "Numerical Optimization", 2nd ed., Springer
       2006, ch. 3 (line search Newton methods).

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
    n_heads, n_samples, n_clusters = heads.shape
    log_w = _check_weights(cluster_weights, n_heads, n_clusters, batched)
    init_arr = _check_init(init, n_heads, n_clusters, batched)

    labels: torch.Tensor | None = None
    q: torch.Tensor | None = None
    outs = []
    n_workers = torch.get_num_threads() if x.device.type == "cpu" else 1
    with ThreadPoolExecutor(n_workers) as pool:
        passes = _RowPasses(heads[0], pool if n_workers > 1 else None, n_workers)
        for h in range(n_heads):
            head_init = None if init_arr is None else init_arr[h]
            errors, pot, converged = _iterate(
                heads[h], lamb, log_w[h], tol, int(max_iter), head_init, passes, bool(newton)
            )
            if labels is None:
                # Allocated only now that the first head's kernel buffer has been freed.
                labels = torch.empty((n_heads, n_samples), dtype=torch.int64, device=x.device)
                q = torch.empty_like(heads) if return_q else None
            _assign(heads[h], lamb, pot, passes, labels[h], None if q is None else q[h])
            outs.append((errors, pot - pot.mean(), converged))
    n_iter = max(len(errors) for errors, _, _ in outs)
    # Pad finished heads with their final error so that the log reads "max over heads".
    log = np.max(
        [np.pad(errors, (0, n_iter - len(errors)), mode="edge") for errors, _, _ in outs], axis=0
    )
    state = np.stack([state for _, state, _ in outs])
    assert labels is not None  # n_heads >= 1
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
        converged=all(converged for _, _, converged in outs),
        marginal_error=float(log[-1]),
        state=state,
        q=q,
        log=log,
    )


class _RowPasses:
    """Runs a function over row blocks of (n_samples, n_clusters) matrices.

    Blocks are small enough to stay in cache. On CPU the blocks are split into
    one contiguous group per worker thread (torch releases the GIL): torch's own
    OpenMP threading of block-sized ops is slow, and stalls badly when another
    process occupies a core.
    """

    def __init__(self, like: torch.Tensor, pool: ThreadPoolExecutor | None, n_workers: int):
        n_rows, n_cols = like.shape
        if like.device.type == "cpu":
            step = max(1, _CHUNK_BYTES // (n_cols * like.element_size()))
        else:
            # On accelerators launch overhead dominates: use whole-matrix ops.
            step = n_rows
        blocks = [(lo, min(lo + step, n_rows)) for lo in range(0, n_rows, step)]
        n_groups = min(len(blocks), n_workers)
        bounds = np.linspace(0, len(blocks), n_groups + 1).astype(int)
        self.groups = [blocks[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        self.pool = pool if n_groups > 1 else None

    def map(self, fn: Callable[[list[tuple[int, int]]], _T]) -> list[_T]:
        """``fn(blocks)`` for each group of ``(lo, hi)`` row blocks."""
        if self.pool is None:
            return [fn(group) for group in self.groups]
        return list(self.pool.map(fn, self.groups))


def _assign(
    logits: torch.Tensor,
    lamb: float,
    pot: np.ndarray,
    passes: _RowPasses,
    labels: torch.Tensor,
    q: torch.Tensor | None,
) -> None:
    """Write ``argmax_j Q_ij`` into ``labels`` (and Q, rows summing to 1/N, into ``q``)."""
    pot_t = _score_pot(pot, logits)
    n_samples = logits.shape[0]

    def assign(blocks: list[tuple[int, int]]) -> None:
        for lo, hi in blocks:
            z = _scores(logits[lo:hi], lamb, pot_t)
            labels[lo:hi] = z.argmax(dim=1)
            if q is not None:
                q[lo:hi] = torch.softmax(z, dim=1).div_(n_samples)

    passes.map(assign)


def _iterate(
    logits: torch.Tensor,
    lamb: float,
    log_w: np.ndarray,
    tol: float,
    max_iter: int,
    init: np.ndarray | None,
    passes: _RowPasses,
    newton: bool,
) -> tuple[list[float], np.ndarray, bool]:
    """Iterations on the column potential; return (errors, last evaluated potential, converged)."""
    n_samples, n_clusters = logits.shape
    limit = _ABSORB_LOG[logits.dtype]
    newton_ok = newton and n_clusters <= _NEWTON_MAX_CLUSTERS
    # x: log column scaling (the dual potential); g: the part absorbed into the kernel.
    # The solution's potentials differ by at most lamb * (largest row range of the
    # logits) - log(smallest weight): beyond that a cluster gets less than its weight
    # from every row. Iterates are kept in that box; extrapolation can overshoot it.
    row_range = float((logits.amax(dim=1) - logits.amin(dim=1)).max())
    half_width = (lamb * row_range - log_w.min()) / 2 + 1.0
    x = np.zeros_like(log_w) if init is None else _into_box(init - init.mean(), half_width)
    g = x.copy()
    kernel = torch.empty_like(logits)
    row_max_sum = _fill_kernel(kernel, logits, lamb, g, passes, check=True)
    accel = _Anderson()
    # A warm start is presumed close to the solution, where Newton converges at once.
    newton = _Newton(np.exp(log_w), tol) if init is not None and newton_ok else None
    errors: list[float] = []
    for _ in range(max_iter):
        shift = x - g
        offset = (shift.max() + shift.min()) / 2
        shift -= offset
        if shift.max() > limit:
            g = x.copy()
            row_max_sum = _fill_kernel(kernel, logits, lamb, g, passes)
            shift[:], offset = 0.0, 0.0
        c = torch.from_numpy(np.exp(shift)).to(device=logits.device, dtype=logits.dtype)
        with_hessian = newton is not None and newton.needs_hessian
        sums = passes.map(
            partial(_sweep, kernel, c, value=newton is not None, hessian=with_hessian)
        )
        col, log_row_sum, outer = (
            None if parts[0] is None else sum(t.cpu().numpy() for t in parts)
            for parts in zip(*sums, strict=True)
        )
        with np.errstate(divide="ignore"):
            log_mass = np.log(c.double().cpu().numpy() * col / n_samples)
        # Row sums are at least min(c), so the floor adds at most c_j * floor / min(c).
        floor_mass = shift + LOG_FLOOR[logits.dtype] - shift.min() + math.log(_FLOOR_MARGIN)
        if not (log_mass > floor_mass).all():
            # A cluster has (next to) no kernel mass: get its true mass in the log domain.
            log_mass = _log_col_mass(logits, lamb, x, passes)
        resid = log_w - log_mass
        errors.append(float(np.abs(np.expm1(-resid)).max()))
        if errors[-1] <= tol:
            return errors, x, True
        x_eval = x
        if newton is not None:
            # F(x) = w.x - mean_i log sum_j exp(scores_ij + x_j); the kernel holds
            # exp(scores - row max + g - centre(g)) and the sweep summed log K c.
            center = (g.max() + g.min()) / 2
            value = float(
                np.exp(log_w) @ x - (row_max_sum + log_row_sum) / n_samples - offset - center
            )
            # The rows p of outer = sum p p^T sum to 1, so its row sums are sum p.
            hessian = None if outer is None else (np.diag(outer.sum(axis=1)) - outer) / n_samples
            noise = _VALUE_ULPS * torch.finfo(logits.dtype).eps * (1.0 + np.ptp(x))
            grad = np.exp(log_w) - np.exp(log_mass)
            x = newton.step(x, value, noise, grad, errors[-1], hessian)
            if newton.gave_up:
                newton, newton_ok, accel = None, False, _Anderson()
        else:
            x = _into_box(accel.step(x, resid, errors[-1]), half_width)
            if newton_ok and (errors[-1] <= _NEWTON_ERR or accel.stalled):
                newton = _Newton(np.exp(log_w), tol)
    return errors, x_eval, False


def _into_box(x: np.ndarray, half_width: float) -> np.ndarray:
    """``x`` centred (potentials are defined up to a constant) and clipped to the box."""
    return np.clip(x - (x.max() + x.min()) / 2, -half_width, half_width)


class _Newton:
    """Newton ascent with a backtracking line search on the concave dual F.

    ``step`` is called with F (and its rounding error), its gradient and the
    marginal error at each evaluated point, and with F's (negated) Hessian when
    ``needs_hessian`` asked for one. A point that increases F enough (Armijo's
    condition, up to rounding) is accepted and a Newton step is taken from it;
    otherwise the step from the last accepted point is shortened to the
    maximiser of the quadratic through F's value and slope there and its value
    here (Nocedal & Wright, 2006, ch. 3).

    The Hessian costs several sweeps, so it is reused while the iteration is in
    the quadratic regime: once the error ``e <= sqrt(tol)`` the next step should
    reach ``~e^2 <= tol`` anyway, and a stale Hessian still gives a fast chord
    step. It is refreshed while the error is larger, or when it fell by less
    than half over the last accepted step.
    """

    def __init__(self, weights: np.ndarray, tol: float) -> None:
        self.weights = weights
        self.quadratic_err = math.sqrt(tol)
        # Last accepted point: (x, F, error, direction, slope of F along it).
        self.base: tuple[np.ndarray, float, float, np.ndarray, float] | None = None
        self.t = 1.0
        self.hessian: np.ndarray | None = None
        self.needs_hessian = True
        self.rejections = 0
        self.gave_up = False

    def step(
        self,
        x: np.ndarray,
        value: float,
        noise: float,
        grad: np.ndarray,
        err: float,
        hessian: np.ndarray | None,
    ) -> np.ndarray:
        if hessian is not None:
            self.hessian = hessian
        assert self.hessian is not None  # the first evaluation asks for one
        err0 = math.inf
        if self.base is not None:
            x0, value0, err0, direction, slope = self.base
            enough = value >= value0 + _ARMIJO * self.t * slope - noise
            if not enough:
                self.rejections += 1
                self.gave_up = self.rejections > _NEWTON_MAX_REJECTIONS
            if self.gave_up:
                return x0
            if not enough and self.t > _MIN_STEP:
                curvature = 2 * (value0 + slope * self.t - value)
                t_fit = slope * self.t**2 / curvature if curvature > 0 else 0.0
                self.t = min(max(t_fit, 0.1 * self.t), 0.5 * self.t)
                return x0 + self.t * direction
        self.needs_hessian = err > self.quadratic_err or err > 0.5 * err0
        # The Hessian has the null vector 1 (a constant potential changes nothing) and grad
        # sums to 0: the rank-one w w^T makes the system regular without changing the step.
        w = self.weights
        system = self.hessian + np.diag(_NEWTON_DAMPING * w) + np.outer(w, w)
        # torch's solver: numpy's multithreaded BLAS stalls while torch's threads spin.
        direction = torch.linalg.solve(torch.from_numpy(system), torch.from_numpy(grad)).numpy()
        direction *= min(1.0, _NEWTON_MAX_STEP / np.abs(direction).max())
        self.base = (x, value, err, direction, float(grad @ direction))
        self.t = 1.0
        return x + direction


class _Anderson:
    """Safeguarded Anderson acceleration of the Sinkhorn map ``x -> x + f(x)``.

    Sinkhorn is a fixed-point iteration on the column potential whose
    contraction is slow for confident logits; Anderson mixing of the last few
    iterates extrapolates along the slow directions (Walker & Ni, 2011). An
    extrapolated iterate that makes the error blow up is discarded in favour of
    a plain Sinkhorn step from the best iterate, which always makes progress.
    """

    def __init__(self) -> None:
        self.xs: list[np.ndarray] = []
        self.fs: list[np.ndarray] = []
        self.best: tuple[float, np.ndarray, np.ndarray] = (math.inf, np.empty(0), np.empty(0))
        self.resets = 0

    @property
    def stalled(self) -> bool:
        """Whether extrapolation kept failing and plain Sinkhorn steps are taken."""
        return self.resets >= _AA_MAX_RESETS

    def step(self, x: np.ndarray, f: np.ndarray, err: float) -> np.ndarray:
        if self.stalled:
            return x + f
        best_err, best_x, best_f = self.best
        if err > _AA_GUARD * best_err:
            self.resets += 1
            self.xs.clear()
            self.fs.clear()
            return best_x + best_f
        if err < best_err:
            self.best = (err, x, f)
        self.xs.append(x)
        self.fs.append(f)
        if len(self.xs) > _AA_MEMORY + 1:
            del self.xs[0], self.fs[0]
        if len(self.xs) < 2:
            return x + f
        d_x = np.diff(np.stack(self.xs), axis=0)
        d_f = np.diff(np.stack(self.fs), axis=0)
        # Tikhonov-regularised mixing: where the masses hardly move (nearly hard rows)
        # the differences of residuals are close to singular and plain least squares
        # would extrapolate without bound.
        gram = d_f @ d_f.T
        gram[np.diag_indices_from(gram)] += _AA_RIDGE * max(np.trace(gram), np.finfo(float).tiny)
        gamma = np.linalg.solve(gram, d_f @ f)
        return x + f - (d_x + d_f).T @ gamma


def _sweep(
    kernel: torch.Tensor,
    c: torch.Tensor,
    blocks: list[tuple[int, int]],
    value: bool = False,
    hessian: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Column sums ``K^T (1 / (K c))`` over some row blocks: a row then a column update.

    Also returns, if asked, ``sum_i log (K c)_i`` (for the dual's value) and
    ``sum p p^T`` over the rows ``p`` of the row-normalised ``K diag(c)`` with
    ``|p|^2 <= _NEWTON_SURE`` (for its Hessian), in float64.
    """
    n_clusters = kernel.shape[1]
    col = torch.zeros(n_clusters, dtype=torch.float64, device=kernel.device)
    log_row_sum = torch.zeros((), dtype=torch.float64, device=kernel.device) if value else None
    outer = None
    if hessian:
        outer = torch.zeros((n_clusters, n_clusters), dtype=torch.float64, device=col.device)
        squares = kernel.new_empty((max(hi - lo for lo, hi in blocks), n_clusters))
        c_squared = c.square()
    for lo, hi in blocks:
        # Both products read the same block while it is still in cache.
        block = kernel[lo:hi]
        r = torch.mv(block, c).reciprocal_()
        # float64 accumulation keeps the error estimate exact enough for N ~ 1e6.
        col += torch.mv(block.t(), r)
        if log_row_sum is not None:
            log_row_sum -= r.log().sum(dtype=torch.float64)
        if outer is not None:
            # |p|^2 by a matrix-vector product: reductions along short rows are slow.
            norm2 = torch.mv(torch.mul(block, block, out=squares[: hi - lo]), c_squared)
            unsure = norm2.mul_(r.square()) <= _NEWTON_SURE
            p = block[unsure].mul_(c).mul_(r[unsure].unsqueeze(1))
            outer += (p.t() @ p).double()
    return col, log_row_sum, outer


def _score_pot(pot: np.ndarray, logits: torch.Tensor) -> torch.Tensor:
    """The potential as a tensor in the precision that scores must be computed in.

    Scores near a row's maximum are sums of terms as large as the spread of the
    potential, so float32 loses digits when that spread is large (huge logits
    times large lamb); such blocks are then computed in float64.
    """
    # Centred (a constant shift is absorbed by the rows), so entries are at most spread / 2.
    centered = pot - (pot.max() + pot.min()) / 2
    exact = logits.dtype == torch.float32 and np.ptp(pot) > _F32_POT_SPREAD
    return torch.from_numpy(centered).to(
        device=logits.device, dtype=torch.float64 if exact else logits.dtype
    )


def _scores(
    logits: torch.Tensor, lamb: float, pot: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``lamb * (logits - rowmax) + pot``: log Q up to a per-row constant.

    The row maximum is removed first so that per-row offsets of the logits
    cancel exactly instead of costing float32 precision. Computed in the dtype
    of ``pot``, in ``out`` if given and of that dtype.
    """
    if logits.dtype != pot.dtype:
        logits = logits.to(pot.dtype)
    if out is not None and out.dtype != pot.dtype:
        out = None
    z = torch.sub(logits, logits.amax(dim=1, keepdim=True), out=out)
    return torch.add(pot, z, alpha=lamb, out=z)


def _fill_kernel(
    kernel: torch.Tensor,
    logits: torch.Tensor,
    lamb: float,
    pot: np.ndarray,
    passes: _RowPasses,
    check: bool = False,
) -> float:
    """Write ``exp(scores - rowmax)`` into ``kernel``; every row has maximum 1.

    Returns the sum of the row maxima subtracted (scores with the centred potential).
    """
    pot_t = _score_pot(pot, logits)
    floor = LOG_FLOOR[kernel.dtype]

    def fill(blocks: list[tuple[int, int]]) -> float:
        row_max_sum = 0.0
        for lo, hi in blocks:
            block = logits[lo:hi]
            z = _scores(block, lamb, pot_t, out=kernel[lo:hi])
            z_max = z.amax(dim=1, keepdim=True)
            # Checked here, while the block is in cache, rather than in a separate pass:
            # NaN and +inf make the row maximum NaN, -inf shows in the row minimum.
            if check and not (
                bool(torch.isfinite(z_max).all()) and bool(torch.isfinite(block.amin(dim=1)).all())
            ):
                raise ValueError("logits contain NaN or infinite values")
            row_max_sum += float(z_max.sum(dtype=torch.float64))
            z.sub_(z_max).clamp_(min=floor).exp_()
            if z.dtype != kernel.dtype:
                kernel[lo:hi] = z
        return row_max_sum

    return sum(passes.map(fill))


def _log_col_mass(
    logits: torch.Tensor, lamb: float, pot: np.ndarray, passes: _RowPasses
) -> np.ndarray:
    """Log cluster masses of Q with exactly normalised rows, without underflow."""
    pot_t = torch.from_numpy(pot).to(logits.device)

    def reduce(blocks: list[tuple[int, int]]) -> torch.Tensor:
        out = torch.full_like(pot_t, -math.inf)
        for lo, hi in blocks:
            z = _scores(logits[lo:hi], lamb, pot_t)
            z -= torch.logsumexp(z, dim=1, keepdim=True)
            out = torch.logaddexp(out, torch.logsumexp(z, dim=0))
        return out

    total = torch.logsumexp(torch.stack(passes.map(reduce)), dim=0)
    return total.cpu().numpy() - math.log(logits.shape[0])


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


def _check_weights(weights: Any, n_heads: int, n_clusters: int, batched: bool) -> np.ndarray:
    """Log of the normalised cluster weights, one row per head: ``(n_heads, n_clusters)``."""
    if weights is None:
        return np.full((n_heads, n_clusters), -math.log(n_clusters))
    w = _to_float64(weights, "cluster_weights")
    shapes = [(n_clusters,), (n_heads, n_clusters)] if batched else [(n_clusters,)]
    if w.shape not in shapes:
        expected = " or ".join(str(shape) for shape in shapes)
        raise ValueError(
            f"cluster_weights must have shape {expected} to match logits, got {w.shape}"
        )
    if not np.isfinite(w).all():
        raise ValueError("cluster_weights must be finite")
    if not (w > 0).all():
        raise ValueError("cluster_weights must be strictly positive")
    w = np.broadcast_to(w, (n_heads, n_clusters))
    return np.log(w / w.sum(axis=1, keepdims=True))


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
