"""The settings of one fit, resolved once from the estimator's parameters and the data.

``resolve_settings`` is this package's ``_check_params_vs_input``: it resolves every ``"auto"``,
makes every check that combines parameters or a parameter with the data, draws the seeds, and
picks the label mode. Everything downstream reads the frozen ``Settings`` it returns, never the
estimator's parameters.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils import check_random_state

from ._cluster_count import (
    ClusterCount,
    estimate_n_clusters,
    largest_estimate,
    max_clusters_for,
)
from ._geometry import RowProfile, input_scaling, profile_rows
from ._label_mode import LabelMode
from ._offline import OfflineLabels
from ._online import OnlineLabels
from ._recipes import RECIPES

# max_epochs="auto": a fit from SeLa's random split trains enough epochs for this many
# optimizer steps (with image_shape, else flat rows), within _MIN_EPOCHS..120; a fit from a
# clustering of the rows refines its start rather than finding one, and trains
# _EPOCHS_FROM_START (user guide, "Flat rows" and "Images").
_MIN_IMAGE_STEPS = 960
_MIN_FLAT_STEPS = 480
_MIN_EPOCHS = 60
_EPOCHS_FROM_START = 40
# n_init="auto" trains image fits of at most this many optimizer steps twice.
_MAX_RESTART_STEPS = 1000
# Neighbours that a neighbour view mixes a row with.
_VIEW_NEIGHBORS = 10
# Starts that need dense rows.
_DENSE_STARTS = ("mixture", "layout")
# device="auto" trains on CUDA only when the rows hold at least this many values (rows times
# features): below it, a step's work is too small to pay for the launches and transfers
# (benchmarks/results/gpu.md).
_MIN_CUDA_VALUES = 2_000_000


@dataclass(frozen=True)
class NetworkSettings:
    """What the torch network is built from."""

    n_clusters: int
    n_heads: int
    hidden_layer_sizes: tuple[int, ...]
    embedding_dim: int
    module: type | None
    module_params: dict
    image_shape: tuple[int, int, int] | None
    # "image" with image_shape, else the kind of flat rows (see _geometry)
    input_kind: str
    augment_strength: float
    # The standardization of the input rows (_geometry.input_scaling), float32 of shape
    # (n_features,), resolved once for every network of the fit; None in a loaded model's
    # settings, whose module holds it.
    input_mean: np.ndarray | None = field(default=None, compare=False, repr=False)
    input_scale: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def sparse_batches(self) -> bool:
        """Whether sparse rows reach the (default) encoder as sparse batches."""
        return self.input_kind == "sparse" and self.module is None


@dataclass(frozen=True)
class PropagationSettings:
    """Invariance propagation's settings; its contrastive term's softmax temperature,
    negatives per batch and memory-bank momentum are those of Wang et al."""

    n_neighbors: int
    n_hops: int
    n_positives: int
    label_weight: float
    contrast_weight: float
    temperature: float = 0.1
    n_negatives: int = 4096
    momentum: float = 0.5
    # The positives before the first label step: by hops among the standardised rows
    # (images), or the nearest neighbours themselves in the raw or standardised input
    # (flat rows), by the kind's metric.
    input_positives: str = "hops"
    input_space: str = "standardized"
    input_metric: str = "cosine"
    # Neighbours that the neighbour views mix each row with; 0: no neighbour views.
    view_neighbors: int = 0
    # The positives are found again after every this many label steps (a neighbour search
    # and propagation over all rows each time): positives change little from one step to
    # the next (changelog).
    refresh_every: int = 2


@dataclass(frozen=True)
class Settings:
    """Everything a fit (or a ``partial_fit`` call) needs, resolved."""

    network: NetworkSettings
    labels: LabelMode
    propagation: PropagationSettings | None
    device: torch.device
    # bfloat16 autocast in training steps and the label steps' forward passes
    mixed_precision: bool
    accelerator: Any
    max_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    verbose: int
    # One per initialisation; the first is also the seed of partial_fit.
    seeds: tuple[int, ...]
    checkpoint_dir: str | os.PathLike | None
    warm_start: bool
    on_interrupt: str

    def problem(self) -> dict:
        """The settings that shape the training state, which a resumed checkpoint must match."""
        return {
            "n_clusters": self.network.n_clusters,
            "n_heads": self.network.n_heads,
            "label_mode": self.labels.name,
            "propagation": self.propagation is not None,
        }


def row_profile(estimator, X) -> RowProfile:
    """The ``RowProfile`` of the rows ``X`` of ``estimator.fit(X)``: their kind (named by the
    parameters or detected), their column statistics, and their distinct rows counted up to
    the most clusters the fit may have (the largest estimate with ``n_clusters="auto"``)."""
    est = estimator
    if est.n_clusters == "auto":
        at_least = largest_estimate(X.shape[0], est.max_clusters)
    else:
        at_least = est.n_clusters
    return profile_rows(X, kind=_named_kind(est), at_least=at_least)


def estimated_cluster_count(estimator, X, profile: RowProfile) -> ClusterCount | None:
    """With ``n_clusters="auto"``, the number of clusters in the rows ``X`` of a ``fit`` and
    its curve (``_cluster_count``); None when ``n_clusters`` is a number. ``profile`` is the
    ``row_profile`` of ``X``.

    Raises
    ------
    ValueError
        When the fit cannot estimate it: online mode, an accelerator.
    """
    est = estimator
    if est.n_clusters != "auto":
        return None
    if est.label_mode == "online":
        raise ValueError(
            "n_clusters='auto' needs label_mode='offline': the estimate looks at all rows "
            "before training. Give n_clusters a number for online mode."
        )
    if est.accelerator is not None:
        raise ValueError(
            "n_clusters='auto' cannot be combined with an accelerator: processes that see "
            "their own share of the rows could estimate different numbers. Give n_clusters "
            "a number."
        )
    image_shape, kind = _image_shape_and_kind(est, profile)
    device = resolve_device(est.device, X.shape)
    # A seed of its own, so that the fit draws what a fit with the estimated number would.
    seed = int(np.random.default_rng([_seed_from(est.random_state), 1]).integers(2**31))
    return estimate_n_clusters(
        X,
        kind=kind,
        image_shape=image_shape,
        max_clusters=max_clusters_for(X.shape[0], est.max_clusters),
        seed=seed,
        device=device,
        fast_dtype=torch.bfloat16 if native_bfloat16(device) else torch.float32,
        profile=profile,
    )


def resolve_settings(
    estimator,
    X,
    *,
    profile: RowProfile | None = None,
    n_clusters: int | None = None,
    chunk: bool = False,
    trained_on: str | None = None,
) -> Settings:
    """The ``Settings`` of ``estimator.fit(X)``, or with ``chunk`` of ``partial_fit(X)``.

    ``profile`` is the ``row_profile`` of ``X`` (None: ``X`` is profiled here, its distinct
    rows counted up to the number of clusters). ``n_clusters`` is the number that
    ``n_clusters="auto"`` estimated (None: the estimator's own). ``trained_on`` is the device
    of the network that a ``partial_fit`` call continues.

    Raises
    ------
    ValueError
        On a parameter that does not suit the data, or a combination of parameters that
        cannot work together; the message names them.
    """
    est = estimator
    n_samples = X.shape[0]
    if n_clusters is None:
        if est.n_clusters == "auto":
            raise ValueError(
                "n_clusters='auto' is estimated by fit; a first partial_fit needs a number. "
                "Fit first, or give n_clusters the number of clusters."
            )
        n_clusters = est.n_clusters
    if n_clusters > n_samples:
        raise ValueError(f"n_samples={n_samples} should be >= n_clusters={n_clusters}.")
    if profile is None:
        profile = profile_rows(X, kind=_named_kind(est), at_least=n_clusters)
    if profile.n_distinct < n_clusters:
        raise ValueError(
            f"X holds only {profile.n_distinct} distinct row(s), fewer than n_clusters="
            f"{n_clusters}: no clustering can put them in {n_clusters} clusters."
        )
    if chunk and est.accelerator is not None:
        raise ValueError("partial_fit does not support an accelerator; use fit.")
    online = est.label_mode == "online"
    image_shape, kind = _image_shape_and_kind(est, profile)
    recipe = RECIPES[kind]
    starts = _checked_init(est.init, X, online=online, chunk=chunk)
    if online or chunk:
        starts = ("random",)  # no start: every batch or chunk is labelled from the network
    elif starts == ("auto",):
        starts = tuple(
            start for start in recipe.starts if not (sp.issparse(X) and start in _DENSE_STARTS)
        )
        if not starts or n_samples < recipe.min_start_rows:
            starts = ("random",)
    augment_strength = est.augment_strength
    if recipe.views == "neighbors":
        augment_strength = 0.0
    elif starts == ("mixture",) and recipe.views == "noise":
        # Full-strength noise blurs the boundaries of the start (user guide, "Flat rows").
        augment_strength /= 2
    batch_size = (1024 if online else 256) if est.batch_size == "auto" else est.batch_size
    input_mean, input_scale, _ = input_scaling(profile, kind, image_shape)
    labels: LabelMode
    if online:
        labels = OnlineLabels(
            n_clusters=n_clusters,
            n_heads=est.n_heads,
            queue_size=est.queue_size,
            lamb=est.sinkhorn_lambda,
            n_iter=est.online_sinkhorn_iter,
        )
    else:
        labels = OfflineLabels(
            n_clusters=n_clusters,
            n_heads=est.n_heads,
            lamb=est.sinkhorn_lambda,
            tol=est.sinkhorn_tol,
            max_iter=est.sinkhorn_max_iter,
            n_label_steps=est.n_label_steps,
            cluster_sizes=est.cluster_sizes,
            batch_size=batch_size,
            starts=starts,
            input_metric=recipe.metric,
            # A start from a clustering of the rows keeps its partition.
            repartition=starts == ("random",) and recipe.repartition,
            size_estimate=recipe.sizes,
            layout_clusters=recipe.layout_clusters,
            learned_agreement=recipe.learned_agreement,
            n_steps_no_change=est.n_steps_no_change,
        )
    network = NetworkSettings(
        n_clusters=n_clusters,
        n_heads=est.n_heads,
        hidden_layer_sizes=_checked_hidden_layer_sizes(est.hidden_layer_sizes),
        embedding_dim=est.embedding_dim,
        module=est.module,
        module_params=dict(est.module_params or {}),
        image_shape=image_shape,
        input_kind=kind,
        augment_strength=augment_strength,
        input_mean=input_mean,
        input_scale=input_scale,
    )
    propagation = None
    if not online and (recipe.propagation if est.propagation == "auto" else est.propagation):
        flat = {}
        if kind != "image":
            flat = dict(
                input_positives="knn",
                input_space="raw" if recipe.metric == "cosine" else "standardized",
                input_metric=recipe.metric,
                view_neighbors=_VIEW_NEIGHBORS if recipe.views == "neighbors" else 0,
            )
        propagation = PropagationSettings(
            n_neighbors=est.propagation_neighbors,
            n_hops=est.propagation_hops,
            n_positives=est.propagation_positives,
            label_weight=est.propagation_weight,
            contrast_weight=est.propagation_contrast,
            **flat,
        )
    if trained_on is None:
        device = _training_device(est.device, est.accelerator, propagation is not None, X.shape)
    else:
        device = torch.device(trained_on)
    n_batches = math.ceil(n_samples / batch_size)
    max_epochs = est.max_epochs
    if max_epochs == "auto":
        if starts != ("random",):
            max_epochs = _EPOCHS_FROM_START
        else:
            # A small data set needs more passes for as many optimizer steps as a large one.
            steps = _MIN_IMAGE_STEPS if image_shape is not None else _MIN_FLAT_STEPS
            max_epochs = int(np.clip(math.ceil(steps / n_batches), _MIN_EPOCHS, 120))
    if est.checkpoint_dir is not None and est.accelerator is not None:
        raise ValueError("checkpoint_dir is not supported with an accelerator.")
    if est.warm_start and est.checkpoint_dir is None and not chunk:
        raise ValueError(
            "warm_start=True resumes from the checkpoint in checkpoint_dir; set "
            "checkpoint_dir (a fit that finds no checkpoint there starts afresh)."
        )
    # A fit from a clustering of the rows is fitted once: the score, which favours equal
    # sizes, would pick the fit whose start cut a large cluster over one that kept it.
    restart = (
        image_shape is not None
        and starts == ("random",)
        and max_epochs * n_batches <= _MAX_RESTART_STEPS
    )
    n_init = 1 if chunk else _n_init(est, online, restart)
    seed = _seed_from(est.random_state)
    more = np.random.default_rng(seed).integers(np.iinfo(np.int32).max, size=n_init - 1)
    mixed_precision = est.mixed_precision
    if mixed_precision == "auto":
        # The layout start's autoencoder and the network that learns its labels are wide
        # fully connected layers, which bfloat16 speeds up (user guide, "Using a GPU").
        mixed_precision = (image_shape is not None or "layout" in starts) and native_bfloat16(
            device
        )
    return Settings(
        network=network,
        labels=labels,
        propagation=propagation,
        device=device,
        mixed_precision=bool(mixed_precision),
        accelerator=est.accelerator,
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=est.lr,
        weight_decay=est.weight_decay,
        verbose=est.verbose,
        seeds=(seed, *(int(s) for s in more)),
        checkpoint_dir=est.checkpoint_dir,
        warm_start=est.warm_start,
        on_interrupt=est.on_interrupt,
    )


def _n_init(est, online: bool, restart: bool) -> int:
    """``n_init``, with ``"auto"`` resolved: 2 where ``restart`` says a fit pays to repeat."""
    if est.n_init == "auto":
        single = online or est.checkpoint_dir is not None or est.accelerator is not None
        return 1 if single or not restart else 2
    if est.n_init > 1 and est.checkpoint_dir is not None:
        raise ValueError(
            f"n_init={est.n_init} cannot be combined with checkpoint_dir: a checkpoint holds "
            "one training run. Use n_init=1 to checkpoint and resume."
        )
    if est.n_init > 1 and est.accelerator is not None:
        raise ValueError(
            f"n_init={est.n_init} cannot be combined with an accelerator: processes that "
            "score their own share of the data could keep different fits. Use n_init=1."
        )
    return est.n_init


def _checked_init(init: str, X, *, online: bool, chunk: bool) -> tuple[str, ...]:
    """``init``, checked against the label mode, the method and the rows, as the starts that
    the fit may choose from (``("auto",)``: the recipe's)."""
    if init == "auto":
        return (init,)
    if online or chunk:
        raise ValueError(
            f"init={init!r} sets the labels that an offline fit starts from; online mode and "
            "partial_fit label every batch or chunk from the network itself. Use init='auto'."
        )
    if init in _DENSE_STARTS and sp.issparse(X):
        raise ValueError(
            f"init={init!r} needs dense rows; for sparse rows use init='kmeans' (their "
            "cosine geometry) or 'random'."
        )
    return (init,)


def _checked_hidden_layer_sizes(hidden_layer_sizes) -> tuple[int, ...]:
    sizes = np.asarray(hidden_layer_sizes).reshape(-1)
    if not all(isinstance(s, Integral) and s >= 1 for s in sizes.tolist()):
        raise ValueError(
            "hidden_layer_sizes must be a sequence of positive integers, got "
            f"{hidden_layer_sizes!r}."
        )
    return tuple(int(s) for s in sizes)


def _named_kind(est) -> str:
    """The kind of rows that the parameters name: ``"image"`` with an image shape, else
    ``input_kind`` (``"auto"``: to be detected from the rows)."""
    return "image" if est.image_shape is not None else est.input_kind


def _image_shape_and_kind(est, profile: RowProfile) -> tuple[tuple[int, int, int] | None, str]:
    """The checked ``image_shape``, and the kind of rows: ``"image"`` with an image shape,
    else ``input_kind`` (detected from the rows when ``"auto"``), as ``profile`` holds it."""
    return _checked_image_shape(est.image_shape, profile.n_features), profile.kind


def _checked_image_shape(image_shape, n_features: int) -> tuple[int, int, int] | None:
    """``image_shape`` as ``(C, H, W)``, checked against the number of features."""
    if image_shape is None:
        return None
    shape = np.asarray(image_shape).reshape(-1).tolist()
    if not (len(shape) in (2, 3) and all(isinstance(s, Integral) and s >= 1 for s in shape)):
        raise ValueError(
            "image_shape must be (height, width) or (channels, height, width) of positive "
            f"integers, got {image_shape!r}."
        )
    shape = ([1] if len(shape) == 2 else []) + [int(s) for s in shape]
    if int(np.prod(shape)) != n_features:
        raise ValueError(
            f"image_shape={tuple(image_shape)} holds {int(np.prod(shape))} pixels but X "
            f"has {n_features} features; rows must be images flattened in C, H, W order."
        )
    return tuple(shape)


def _training_device(device: str, accelerator, propagation: bool, shape) -> torch.device:
    if accelerator is None:
        return resolve_device(device, shape)
    if accelerator.device_placement:
        raise ValueError(
            "Create the accelerator with Accelerator(device_placement=False): the estimator "
            "places the network and its batches on accelerator.device itself."
        )
    if propagation:
        raise ValueError(
            "propagation is not supported with an accelerator; set propagation=False "
            "or use label_mode='online'."
        )
    return torch.device(accelerator.device)


def native_bfloat16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively (so that autocast to it is faster)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_device(device: str, shape: tuple[int, int] | None = None) -> torch.device:
    """The torch device that ``device`` names. ``"auto"``: CUDA when it is available and the
    rows of ``shape`` (None: any) hold at least ``_MIN_CUDA_VALUES`` values, else the CPU."""
    if device == "auto":
        large = shape is None or shape[0] * shape[1] >= _MIN_CUDA_VALUES
        return torch.device("cuda" if torch.cuda.is_available() and large else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a torch device: {exc}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available.")
    return resolved


def _seed_from(random_state) -> int:
    """A 31-bit seed for torch and numpy Generators, without touching the global numpy state."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1)[0] >> 1)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
