"""Tests for the Sinkhorn equipartition solver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import log_softmax

from sklearn_selflabel.sinkhorn import SinkhornResult, _sweep, sinkhorn_equipartition

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def network_logits(
    rng: np.random.Generator, n: int, k: int, scale: float = 3.0, dtype=np.float64
) -> np.ndarray:
    """Logits with low-rank cluster structure plus noise, like a trained network's."""
    feats = rng.normal(size=(n, 8))
    weights = rng.normal(size=(8, k)) * scale / np.sqrt(8)
    return (feats @ weights + 0.5 * rng.normal(size=(n, k))).astype(dtype)


def top2_gap(q: np.ndarray) -> np.ndarray:
    """Per row, relative gap between the largest and second largest entry."""
    top = np.sort(q, axis=1)[:, -2:]
    return (top[:, 1] - top[:, 0]) / top[:, 1]


# --------------------------------------------------------------------------- POT


# A sample of N x K x lamb spanning the extremes. N = K with a large lamb is left out: it is
# nearly a permutation problem on which any Sinkhorn variant converges sublinearly (POT's
# sinkhorn_log takes minutes to reach 1e-11), and N=1e5 uses a K and lamb POT solves fast.
@pytest.mark.parametrize(
    ("n", "k", "lamb", "weighted"),
    [
        (1_000, 10, 1.0, False),
        (1_000, 10, 50.0, True),
        (1_000, 100, 10.0, False),
        (1_000, 100, 25.0, True),
        (1_000, 1_000, 1.0, False),
        (100_000, 10, 10.0, False),
    ],
)
def test_matches_pot(n, k, lamb, weighted):
    ot = pytest.importorskip("ot")
    rng = np.random.default_rng(n + k)
    logits = network_logits(rng, n, k, scale=1.0)
    w = rng.uniform(0.5, 2.0, size=k) if weighted else np.ones(k)
    w /= w.sum()
    res = sinkhorn_equipartition(
        logits, lamb=lamb, cluster_weights=w, tol=1e-10, max_iter=10_000, return_q=True
    )
    assert res.converged
    plan = ot.sinkhorn(
        np.full(n, 1 / n),
        w,
        -log_softmax(logits, axis=1),
        reg=1 / lamb,
        method="sinkhorn_log",
        stopThr=1e-11,
        numItermax=100_000,
    )
    # Both sum to one with rows 1/N: compare on that scale, and per row too.
    assert np.abs(res.q - plan).max() <= 1e-5
    assert np.abs(res.q - plan).max() * n <= 1e-5

    res32 = sinkhorn_equipartition(logits.astype(np.float32), lamb=lamb, cluster_weights=w)
    assert res32.converged
    assert np.mean(res32.labels == plan.argmax(axis=1)) >= 0.999


# ------------------------------------------------------------------- properties

small_problem = st.tuples(st.integers(1, 40), st.integers(1, 60)).flatmap(
    lambda shape: hnp.arrays(
        np.float32,
        shape,
        elements=st.floats(-1e4, 1e4, width=32),
    )
)


@PROPERTY
@given(
    logits=small_problem,
    lamb=st.floats(1e-2, 1e3),
    scale=st.sampled_from([1e-3, 1.0, 1e4]),
)
def test_stable_for_extreme_inputs(logits, lamb, scale):
    logits = np.clip(logits * np.float32(scale), -1e4, 1e4)
    n, k = logits.shape
    res = sinkhorn_equipartition(logits, lamb=lamb, max_iter=50, return_q=True)
    assert np.isfinite(res.q).all() and np.isfinite(res.state).all()
    assert np.isfinite(res.log).all() and np.isfinite(res.marginal_error)
    assert res.labels.dtype == np.int64 and res.labels.shape == (n,)
    assert ((res.labels >= 0) & (res.labels < k)).all()
    assert res.q.shape == (n, k) and res.q.dtype == np.float32
    np.testing.assert_allclose(res.q.sum(axis=1), 1 / n, rtol=1e-4)
    if res.converged:
        assert res.marginal_error <= 1e-3
        mass = res.q.astype(np.float64).sum(axis=0) * k
        assert np.abs(mass - 1).max() <= 1e-3 + 1e-4


@pytest.mark.parametrize("shape", [(1, 5_000), (3, 5_000), (200, 2)])
def test_stable_at_the_documented_extremes(shape):
    rng = np.random.default_rng(0)
    logits = (rng.uniform(-1e4, 1e4, size=shape)).astype(np.float32)
    res = sinkhorn_equipartition(logits, lamb=1_000.0, max_iter=100, return_q=True)
    assert np.isfinite(res.q).all() and np.isfinite(res.marginal_error)
    if res.converged:
        mass = res.q.astype(np.float64).sum(axis=0) * shape[1]
        assert np.abs(mass - 1).max() <= 1.1e-3


def test_single_row_is_solved_exactly():
    logits = np.random.default_rng(0).normal(size=(1, 7)) * 100
    w = np.arange(1.0, 8.0)
    res = sinkhorn_equipartition(logits, lamb=50.0, cluster_weights=w, return_q=True)
    assert res.converged
    np.testing.assert_allclose(res.q[0], w / w.sum(), rtol=1e-3)


def test_confident_network_revives_empty_clusters():
    # Every row prefers cluster 0 by a margin that underflows exp(lamb * margin).
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2_000, 10)).astype(np.float32)
    logits[:, 0] += 20.0
    res = sinkhorn_equipartition(logits, lamb=25.0, return_q=True)
    assert res.converged
    sizes = np.bincount(res.labels, minlength=10)
    assert sizes.min() > 150 and sizes.max() < 250


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 300), k=st.integers(1, 30))
def test_converged_error_is_honest(seed, n, k):
    rng = np.random.default_rng(seed)
    logits = network_logits(rng, n, k, dtype=np.float32)
    res = sinkhorn_equipartition(logits, lamb=25.0, tol=1e-3, return_q=True)
    assert len(res.log) == res.n_iter and res.log[-1] == res.marginal_error
    if res.converged:
        assert res.marginal_error <= 1e-3
        mass = res.q.astype(np.float64).sum(axis=0) * k
        assert np.abs(mass - 1).max() <= 1e-3 + 1e-5
    else:
        assert res.marginal_error > 1e-3


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(50, 300), k=st.integers(2, 10))
def test_invariant_to_row_constants(seed, n, k):
    # n >> k keeps the problem well conditioned, so a tight marginal tolerance pins Q down.
    rng = np.random.default_rng(seed)
    logits = network_logits(rng, n, k)
    shifted = logits + rng.uniform(-100, 100, size=(n, 1))
    a = sinkhorn_equipartition(logits, lamb=10.0, tol=1e-9, return_q=True)
    b = sinkhorn_equipartition(shifted, lamb=10.0, tol=1e-9, return_q=True)
    np.testing.assert_allclose(b.q, a.q, rtol=1e-5, atol=1e-9 / n)
    clear = top2_gap(a.q) > 1e-6
    assert (a.labels[clear] == b.labels[clear]).all()


@PROPERTY
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(50, 300), k=st.integers(2, 10))
def test_equivariant_to_permutations(seed, n, k):
    rng = np.random.default_rng(seed)
    logits = network_logits(rng, n, k)
    w = rng.uniform(0.5, 2.0, size=k)
    rows, cols = rng.permutation(n), rng.permutation(k)
    base = sinkhorn_equipartition(logits, lamb=10.0, cluster_weights=w, tol=1e-9, return_q=True)
    perm = sinkhorn_equipartition(
        logits[rows][:, cols], lamb=10.0, cluster_weights=w[cols], tol=1e-9, return_q=True
    )
    np.testing.assert_allclose(perm.q, base.q[rows][:, cols], rtol=1e-5, atol=1e-9 / n)
    clear = top2_gap(base.q[rows]) > 1e-6
    # Cluster j of the permuted problem is cluster cols[j] of the original.
    assert (cols[perm.labels][clear] == base.labels[rows][clear]).all()
    np.testing.assert_allclose(perm.state - perm.state.mean(), base.state[cols], atol=1e-6)


@PROPERTY
@given(
    seed=st.integers(0, 2**32 - 1),
    k=st.integers(2, 30),
    concentration=st.floats(0.3, 10.0),
)
def test_cluster_weights_are_honoured(seed, k, concentration):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.full(k, concentration)) + 1e-3
    logits = network_logits(rng, 500, k, dtype=np.float32)
    res = sinkhorn_equipartition(logits, lamb=10.0, cluster_weights=w * 7, return_q=True)
    assert res.converged
    target = w / w.sum()
    mass = res.q.astype(np.float64).sum(axis=0)
    assert np.abs(mass / target - 1).max() <= 1e-3 + 1e-5
    # Hard labels follow the weights too (up to rounding of soft to hard assignment).
    sizes = np.bincount(res.labels, minlength=k) / len(res.labels)
    assert 0.5 * np.abs(sizes - target).sum() <= 0.15


def test_per_head_cluster_weights_solve_each_head_with_its_own():
    rng = np.random.default_rng(3)
    logits = network_logits(rng, 3 * 400, 6, dtype=np.float32).reshape(3, 400, 6)
    weights = rng.dirichlet(np.ones(6), size=3) + 0.05
    batched = sinkhorn_equipartition(logits, lamb=10.0, cluster_weights=weights, return_q=True)
    for head in range(3):
        alone = sinkhorn_equipartition(
            logits[head], lamb=10.0, cluster_weights=weights[head], return_q=True
        )
        np.testing.assert_array_equal(batched.labels[head], alone.labels)
        np.testing.assert_allclose(batched.q[head], alone.q, atol=1e-6)
    # A 2-D weight for a single head, or one row per head of the wrong count, is refused.
    with pytest.raises(ValueError, match=r"shape \(6,\) to match"):
        sinkhorn_equipartition(logits[0], cluster_weights=weights)
    with pytest.raises(ValueError, match=r"\(3, 6\)"):
        sinkhorn_equipartition(logits, cluster_weights=weights[:2])


# --------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logits": np.array([[0.0, np.nan]])}, "NaN or infinite"),
        ({"logits": np.array([[0.0, np.inf]])}, "NaN or infinite"),
        ({"logits": np.array([[0.0, -np.inf], [1.0, 2.0]])}, "NaN or infinite"),
        ({"logits": np.zeros(5)}, "2-D"),
        ({"logits": np.zeros((2, 3, 4, 5))}, "2-D"),
        ({"logits": np.zeros((0, 3))}, "non-empty"),
        ({"logits": np.zeros((3, 0))}, "non-empty"),
        ({"logits": np.array([["a", "b"]])}, "real numeric"),
        ({"cluster_weights": [1.0, -1.0, 1.0]}, "strictly positive"),
        ({"cluster_weights": [1.0, 0.0, 1.0]}, "strictly positive"),
        ({"cluster_weights": [1.0, 1.0]}, r"shape \(3,\)"),
        ({"cluster_weights": [1.0, np.nan, 1.0]}, "finite"),
        ({"cluster_weights": [1.0, np.inf, 1.0]}, "finite"),
        ({"lamb": 0.0}, "lamb"),
        ({"lamb": -1.0}, "lamb"),
        ({"lamb": np.nan}, "lamb"),
        ({"tol": 0.0}, "tol"),
        ({"tol": -1e-3}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"max_iter": 2.5}, "max_iter"),
        ({"init": np.zeros(4)}, r"init must have shape \(3,\)"),
        ({"init": np.zeros((1, 3))}, r"init must have shape \(3,\)"),
        ({"init": [0.0, np.nan, 0.0]}, "init must be finite"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"logits": np.zeros((4, 3)), **kwargs}
    with pytest.raises(ValueError, match=match):
        sinkhorn_equipartition(args.pop("logits"), **args)


def test_bad_batched_init_raises():
    with pytest.raises(ValueError, match=r"init must have shape \(2, 3\)"):
        sinkhorn_equipartition(np.zeros((2, 4, 3)), init=np.zeros(3))


# ------------------------------------------------------------ types and heads


def test_numpy_in_numpy_out():
    logits = network_logits(np.random.default_rng(0), 100, 5, dtype=np.float32)
    res = sinkhorn_equipartition(logits, return_q=True)
    assert isinstance(res, SinkhornResult)
    assert isinstance(res.labels, np.ndarray) and res.labels.dtype == np.int64
    assert isinstance(res.state, np.ndarray) and res.state.shape == (5,)
    assert isinstance(res.q, np.ndarray) and res.q.dtype == np.float32
    assert isinstance(res.log, np.ndarray) and isinstance(res.n_iter, int)
    assert sinkhorn_equipartition(logits).q is None
    with pytest.raises(AttributeError):
        res.n_iter = 3  # frozen


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_in_torch_out(device, dtype):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    logits_np = network_logits(np.random.default_rng(0), 300, 7)
    logits = torch.tensor(logits_np, dtype=dtype, device=device, requires_grad=True)
    res = sinkhorn_equipartition(logits, tol=1e-6, return_q=True)
    assert isinstance(res.labels, torch.Tensor) and res.labels.dtype == torch.int64
    assert res.labels.device == logits.device and res.q.device == logits.device
    assert res.q.dtype == dtype and isinstance(res.state, torch.Tensor)
    ref = sinkhorn_equipartition(logits_np.astype(np.float32), tol=1e-6, return_q=True)
    np.testing.assert_allclose(res.q.detach().cpu().numpy(), ref.q, rtol=1e-4, atol=1e-9)
    warm = sinkhorn_equipartition(logits, tol=1e-6, init=res.state)
    assert warm.n_iter <= 2


def test_batched_equals_separate_heads():
    rng = np.random.default_rng(0)
    heads = np.stack([network_logits(rng, 400, 8, scale=s) for s in (0.5, 2.0, 5.0)])
    init = rng.normal(size=(3, 8))
    res = sinkhorn_equipartition(heads, lamb=20.0, init=init, return_q=True)
    singles = [
        sinkhorn_equipartition(h, lamb=20.0, init=i, return_q=True)
        for h, i in zip(heads, init, strict=True)
    ]
    assert res.labels.shape == (3, 400) and res.state.shape == (3, 8)
    assert res.q.shape == (3, 400, 8)
    for h, single in enumerate(singles):
        np.testing.assert_array_equal(res.labels[h], single.labels)
        np.testing.assert_allclose(res.q[h], single.q)
        np.testing.assert_allclose(res.state[h], single.state)
    assert res.n_iter == max(s.n_iter for s in singles) == len(res.log)
    assert res.converged == all(s.converged for s in singles)
    assert res.marginal_error == max(s.marginal_error for s in singles)


def test_threaded_sweeps_match_serial():
    # Large enough for several row blocks; tests run torch single-threaded otherwise.
    logits = network_logits(np.random.default_rng(0), 30_000, 50, dtype=np.float32)
    serial = sinkhorn_equipartition(logits, tol=1e-5, return_q=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        threaded = sinkhorn_equipartition(logits, tol=1e-5, return_q=True)
    finally:
        torch.set_num_threads(threads)
    assert threaded.converged and serial.converged
    # Another summation order may take the accelerated iteration down another path to a point
    # within tol, so the plans agree to the solver's accuracy, not to the last bit (seen on a
    # 16-core AVX-512 host); the labels must still agree.
    np.testing.assert_allclose(threaded.q, serial.q, rtol=1e-3, atol=1e-3 / serial.q.size)
    assert np.mean(threaded.labels == serial.labels) >= 0.999


# ------------------------------------------------------------------ warm start


@pytest.mark.parametrize("noise", [0.01, 0.05])
def test_warm_start_needs_fewer_iterations(noise):
    rng = np.random.default_rng(0)
    logits = network_logits(rng, 20_000, 50, dtype=np.float32)
    base = sinkhorn_equipartition(logits)
    noisy = logits + np.float32(noise * logits.std()) * rng.standard_normal(
        logits.shape, dtype=np.float32
    )
    cold = sinkhorn_equipartition(noisy)
    warm = sinkhorn_equipartition(noisy, init=base.state)
    assert cold.converged and warm.converged
    # The first iteration only evaluates the warm start; one Newton step (two at most) follows.
    assert warm.n_iter <= 3 and 3 * warm.n_iter <= cold.n_iter
    assert warm.log[0] > 1e-3 and warm.marginal_error <= 1e-3


# float32 column sums are accurate to ~1e-6, so its tolerance stays well above that.
@pytest.mark.parametrize(("dtype", "tol"), [(np.float32, 1e-4), (np.float64, 1e-9)])
def test_warm_start_from_the_solution_takes_one_iteration(dtype, tol):
    logits = network_logits(np.random.default_rng(0), 5_000, 30, dtype=dtype)
    solved = sinkhorn_equipartition(logits, tol=tol)
    again = sinkhorn_equipartition(logits, tol=tol, init=solved.state)
    assert again.converged and again.n_iter == 1
    np.testing.assert_array_equal(again.labels, solved.labels)


@pytest.mark.parametrize("seed", range(3))
def test_confident_network_converges_fast(seed):
    # Few rows per cluster and confident logits: most rows are one-hot at lamb=25, so the
    # cluster masses hardly move with the potentials and Sinkhorn needs 50-100+ iterations
    # (Anderson included); Newton steps on the dual take about 20.
    logits = network_logits(np.random.default_rng(seed), 2_000, 10, scale=20.0, dtype=np.float32)
    res = sinkhorn_equipartition(logits, lamb=25.0, max_iter=1_000)
    assert res.converged and res.n_iter <= 40


@pytest.mark.parametrize("seed", range(40))
def test_nearly_hard_rows_converge_cold_and_warm(seed):
    # Label steps of a trained network: a few confident rows per cluster, unequal
    # clusters. The masses move only when rows flip, so the residual differences that
    # Anderson mixes are nearly singular and the dual's Hessian nearly zero; neither
    # may be allowed to extrapolate without bound (both once ran away here).
    rng = np.random.default_rng(seed)
    k = int(rng.choice([2, 3, 10, 50]))
    n = int(rng.choice([150, 1_000, 5_000]))
    y = rng.choice(k, n, p=rng.dirichlet(np.full(k, rng.choice([0.3, 1.0, 10.0]))))
    logits = rng.normal(0.0, 0.3, (n, k)).astype(np.float32)
    logits[np.arange(n), y] += rng.choice([1.5, 5.0])
    lamb = float(rng.choice([10.0, 25.0]))
    # Clusters that no row prefers take a hundred or more iterations; a runaway never ends.
    cold = sinkhorn_equipartition(logits, lamb=lamb, max_iter=300)
    assert cold.converged, (k, n, lamb, cold.log[-5:])
    perturbed = logits + rng.normal(0.0, 0.05, logits.shape).astype(np.float32)
    warm = sinkhorn_equipartition(perturbed, lamb=lamb, max_iter=300, init=cold.state)
    assert warm.converged, (k, n, lamb, warm.log[-5:])


def test_unconverged_result_describes_the_returned_plan():
    logits = network_logits(np.random.default_rng(0), 2_000, 10, scale=20.0)
    for max_iter in (1, 2, 5):
        res = sinkhorn_equipartition(logits, max_iter=max_iter, tol=1e-12, return_q=True)
        assert not res.converged and res.n_iter == max_iter
        mass = res.q.sum(axis=0) * 10
        assert np.abs(mass - 1).max() == pytest.approx(res.marginal_error, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sweep_gives_the_dual_value_and_hessian(dtype):
    # The line search and Newton steps rely on these sums; compare with a direct computation.
    kernel = torch.rand(1_000, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    kernel = kernel**8  # a mix of confident and uncertain rows
    c = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    blocks = [(0, 300), (300, 1_000)]
    col, log_row_sum, outer = _sweep(
        kernel.to(dtype), c.to(dtype), blocks, value=True, hessian=True
    )
    row_sum = kernel @ c
    p = kernel * c / row_sum[:, None]
    unsure = (p**2).sum(dim=1) <= 0.99
    assert 0 < int(unsure.sum()) < 1_000
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(col, kernel.t() @ (1 / row_sum), rtol=rtol, atol=0)
    torch.testing.assert_close(log_row_sum, row_sum.log().sum(), rtol=rtol, atol=0)
    torch.testing.assert_close(outer, p[unsure].t() @ p[unsure], rtol=rtol, atol=1e-9)
    col_only, no_value, no_hessian = _sweep(kernel.to(dtype), c.to(dtype), blocks)
    assert no_value is None and no_hessian is None
    torch.testing.assert_close(col_only, col)


def test_log_records_each_iteration():
    logits = network_logits(np.random.default_rng(0), 1_000, 20)
    res = sinkhorn_equipartition(logits, lamb=25.0, max_iter=3, tol=1e-12)
    assert res.n_iter == 3 and not res.converged
    assert res.log.shape == (3,) and res.log[-1] == res.marginal_error


def test_without_newton_the_same_problem_is_solved_by_sinkhorn_alone():
    # A confident network: Newton converges in a few steps where Sinkhorn crawls.
    logits = np.random.default_rng(3).normal(scale=4.0, size=(3000, 10)).astype(np.float32)
    hybrid = sinkhorn_equipartition(logits, lamb=25.0, tol=1e-4)
    sinkhorn_only = sinkhorn_equipartition(logits, lamb=25.0, tol=1e-4, newton=False)
    assert hybrid.converged and sinkhorn_only.converged
    assert sinkhorn_only.n_iter > hybrid.n_iter
    assert np.mean(hybrid.labels == sinkhorn_only.labels) > 0.99
