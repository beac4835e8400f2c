"""``SelfLabelingClusterer``: the scikit-learn face of self-labelling deep clustering."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.sparsefuncs import mean_variance_axis
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ._callbacks import (
    EpochProgress,
    FiniteLossGuard,
    LabelStep,
    PropagationRefresh,
    estimated_cluster_weights,
    label_step_epochs,
)
from ._checkpoint import (
    EpochEndState,
    data_fingerprint,
    load_state,
    read_checkpoint,
    restore_torch_rng,
    restore_training_state,
)
from ._dask import is_dask_array, map_row_blocks
from ._data import (
    IndexedRows,
    check_out_of_core,
    column_mean_and_variance,
    dense_rows,
    is_out_of_core,
    shuffled_batch_loader,
)
from ._net import SelfLabelNet
from ._online import ChunkLabelStep, OnlineLabelStep, OnlineSelfLabelNet
from .augment import ImageAugment, TabularAugment
from .modules import ConvEncoder, MLPEncoder, MultiHeadClassifier, SelfLabelNetwork
from .sinkhorn import sinkhorn_equipartition

_INPUT_DTYPES = [np.float32, np.float64]
# Invariance propagation's contrastive term: softmax temperature, negatives per batch, and
# the memory bank's momentum (Wang et al. use 0.1, 4096 and 0.5).
_PROPAGATION_SETTINGS = dict(temperature=0.1, n_negatives=4096, momentum=0.5)
# Optimizer steps that max_epochs="auto" gives an image fit at least (within 60..120 epochs):
# 120 epochs on sklearn digits clustered better than 60 (ACC 0.93 against 0.89).
_MIN_IMAGE_STEPS = 960
# n_init="auto" trains image fits of at most this many optimizer steps twice: small image sets
# vary most from seed to seed (sklearn digits: ACC 0.87-0.95), and the better-scored of two
# fits is better on average (12 seeds: 0.935 against 0.927 for a single fit).
_MAX_RESTART_STEPS = 1000
# With cluster_sizes="estimated", label steps aim at estimated sizes from this fraction of
# the last label step's epoch on: before, the embedding does not yet hold the categories.
# Starting from 0.3 moved USPS seeds by up to 0.04 either way (seeds 0 and 1, unweighted vote).
_ESTIMATED_SIZES_FROM = 0.5


class SelfLabelingClusterer(
    ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin, BaseEstimator
):
    """Deep clustering by self-labelling with an equipartition constraint (SeLa).

    A network ``h ∘ Φ`` (an encoder ``Φ`` and ``n_heads`` linear classifier heads ``h``) is
    trained with cross-entropy against hard labels that the method finds itself. On a schedule
    that is dense early and sparse late, each head's labels are recomputed as ``argmax Q`` where
    ``Q = diag(α) P^λ diag(β)`` is the solution of the equipartition optimal-transport problem
    (every cluster receives ``n_samples / n_clusters`` of the mass), found by Sinkhorn-Knopp
    iterations on the network's probabilities ``P``. The constraint keeps the clustering from
    collapsing into one cluster and maximises the information between samples and labels.
    Labels start as a random equal split. Training sees augmented views of the rows (Gaussian
    noise and feature masking, or affine warps of images with ``image_shape``); the label
    step, ``predict`` and ``transform`` see clean rows. With ``image_shape``, invariance
    propagation also pulls each row towards the hardest of the rows reachable from it through
    nearest-neighbour links in the embedding.

    The network is a skorch ``NeuralNet`` built in ``fit`` and kept as ``net_``; its
    ``history`` records, per epoch, the loss, whether a label step ran, the fraction of labels
    it changed and the smallest and largest cluster size.

    Parameters
    ----------
    n_clusters : int, default=8
        Number of clusters ``K``.
    n_heads : int, default=8
        Number of classifier heads, each with its own labels. ``predict`` uses the head with
        the lowest training loss (``best_head_``).
    hidden_layer_sizes : tuple of int, default=(512, 256)
        Widths of the hidden layers of the default MLP encoder.
    embedding_dim : int, default=64
        Size of the embedding ``Φ(X)`` of the default MLP encoder (the output of ``transform``).
    module : type of torch.nn.Module or None, default=None
        Your own encoder class, used instead of the MLP. It is called as
        ``module(n_features=n_features_in_, **module_params)`` and must map a float32 tensor of
        shape ``(batch, n_features)`` to ``(batch, embedding_dim)``; the embedding size is read
        from a forward pass. ``hidden_layer_sizes`` and ``embedding_dim`` are then ignored.
    module_params : dict or None, default=None
        Keyword arguments for ``module``. Tune them with ``GridSearchCV`` by listing dicts.
    max_epochs : int or "auto", default="auto"
        Number of training epochs (passes over the data). ``"auto"``: 120; with
        ``image_shape``, enough epochs for at least 960 mini-batch steps, between 60 and 120
        (an epoch of the convolutional network costs more, and on USPS 120 epochs clustered
        no better than 60, while sklearn digits, 8 batches an epoch, needs the 120).
    batch_size : int or "auto", default="auto"
        Mini-batch size for training and the batch size of inference. ``"auto"`` is 256 in
        offline mode and 1024 in online mode, whose per-batch labels need many rows of each
        cluster in every batch, and a queue only a few batches old.
    lr : float, default=1e-3
        Learning rate of the Adam optimizer.
    weight_decay : float, default=1e-4
        L2 weight decay of the optimizer.
    sinkhorn_lambda : float, default=25.0
        Inverse entropic regularisation ``λ`` of the label step: larger is closer to the hard
        assignment problem, smaller is smoother. SeLa uses 25 (10 on CIFAR).
    sinkhorn_tol : float, default=1e-3
        Tolerance of the Sinkhorn iterations on the relative cluster-mass error (independent of
        ``n_samples``).
    sinkhorn_max_iter : int, default=100
        Iteration cap of each label step. Late in training a confident network makes the
        problem ill-conditioned and Sinkhorn slow; the hard labels of a capped step are still
        nearly balanced (``history`` records each step's ``sinkhorn_error``), and on digits a
        cap of 100 gave the same accuracy as 1000 in half the fit time.
    n_label_steps : int, default=60
        Number of label steps, placed after epoch ``(max_epochs - 1) * (i / n_label_steps)**2``
        for ``i = 0 .. n_label_steps - 1`` (coinciding epochs merge).
    cluster_sizes : {"equal", "estimated"}, default="estimated"
        Cluster sizes that the label steps aim at. ``"equal"``: SeLa's equipartition in every
        step, and in the last one, run on the trained network to fix what ``predict`` gives
        (see ``logit_offsets_``). ``"estimated"``: the equipartition while the embedding
        learns the categories, up to half the epoch of the last scheduled step. The first
        step after that re-partitions: every head takes the partition of the embedding's
        nearest-neighbour links (KMeans parts merged by link density, see
        ``propagation.neighbour_link_partition``), which keeps a large category whole where
        the equipartition had to split it. From then on, and in the last step, each head
        aims at the sizes that its current labels and the embedding support: each training
        row takes the majority label of its 10 nearest neighbours in the embedding, each
        neighbour weighted by the inverse size of its cluster (one vote, on at most 50,000
        evenly spaced rows), and the shares after the vote, at least half the equal share
        each, become the step's cluster marginals. Each step votes from the labels of the
        one before, so a cluster can grow or shrink over several steps towards its
        category's size. Offline mode only; a ``partial_fit`` chunk is labelled with equal
        sizes, its last step with estimated ones.
    augment_strength : float, default=0.5
        Strength of the training views. Tabular rows: Gaussian noise of this many standard
        deviations per feature, and each feature masked to its mean with probability
        ``augment_strength / 2``. Images (``image_shape``): the scale of the affine jitter.
    image_shape : tuple of int or None, default=None
        ``(height, width)`` or ``(channels, height, width)`` when the rows are images
        flattened in that order. It turns on image-aware mode: training views are random
        affine warps (shift, rotation, scale, shear; ``augment_strength`` scales them, the
        default 0.5 is up to 12.5% of the side, 15 degrees, 10% and 0.15), the encoder is a small
        convolutional network (``ConvEncoder``, unless ``module`` is given), the input is
        standardised per channel rather than per pixel, and ``propagation="auto"`` is on.
    propagation : bool or "auto", default="auto"
        Invariance propagation (Wang et al., 2020), offline mode only. A memory bank holds
        the L2-normalised embedding of every row (momentum updates from training). At the
        start, positives are found among the standardised input rows, and at each label step
        again in the bank: the exact ``propagation_neighbors`` nearest neighbours of every
        row (found in chunks, no N x N matrix) are followed for ``propagation_hops`` hops,
        and the ``propagation_positives`` least similar rows reached are its hard positives.
        Training then holds every row to the current labels of its positives (weight
        ``propagation_weight``) and, if ``propagation_contrast > 0``, adds a contrastive term
        that pulls its embedding towards theirs. This teaches invariance to variation within
        a category, not only to the training views. ``"auto"``: on with ``image_shape``, off
        for tabular rows.
    propagation_neighbors : int, default=4
        ``k`` of the nearest-neighbour links.
    propagation_hops : int, default=3
        Number of hops ``l`` followed from each row.
    propagation_positives : int, default=4
        Number of hard (least similar) positives kept per row.
    propagation_weight : float, default=1.0
        Weight of the cross-entropy of each row's logits against its positives' labels, next
        to the cross-entropy against its own.
    propagation_contrast : float, default=0.0
        Weight of the instance-level contrastive term over the memory bank (temperature 0.1,
        4096 random negatives), in which a row and its positives count as one class. On USPS
        it lowered accuracy next to the label term (see ``benchmarks/results/quality.md``).
    label_mode : {"offline", "online"}, default="offline"
        How the labels are found. ``"offline"`` is SeLa's label step: on the schedule of
        ``n_label_steps``, Sinkhorn over the logits of all training rows rewrites an
        ``(n_heads, n_samples)`` label table; best for data that fit in memory. ``"online"``
        gives each training batch its labels by a few Sinkhorn sweeps over the batch plus a
        queue of the most recent ``queue_size`` rows' logits (SwAV-style), so memory does not
        grow with ``n_samples``: use it for millions of rows, data on disk
        (``numpy.memmap``) and streams (``partial_fit``). ``n_label_steps``,
        ``sinkhorn_tol``, ``sinkhorn_max_iter`` and ``propagation`` (whose memory bank holds
        an embedding per row) apply to offline mode only. ``docs/online.rst`` measures the
        trade-offs.
    queue_size : int, default=4096
        Online mode: rows of recent batches whose logits join each batch's Sinkhorn problem,
        so that every cluster has rows to balance against (about ``queue_size / n_clusters``).
    online_sinkhorn_iter : int, default=3
        Online mode: Sinkhorn sweeps per batch; each starts from the previous batch's column
        scalings, so a few sweeps follow the slowly changing problem.
    accelerator : accelerate.Accelerator or None, default=None
        Train through Hugging Face accelerate (skorch's ``AccelerateMixin``), e.g. on several
        GPUs or nodes with ``accelerate launch``. Create it as
        ``Accelerator(device_placement=False)``: the estimator places the network and the
        batches on ``accelerator.device`` itself, and ``device`` is then ignored. Under
        data-parallel training each process trains on its share of the batches; the online
        label step sums its cluster masses over processes, so the equipartition is global.
        Needs ``propagation=False`` in offline mode. ``docs/online.rst`` has the recipe.
    device : str, default="auto"
        Torch device; ``"auto"`` picks CUDA when available, else the CPU.
    n_init : int or "auto", default="auto"
        Number of times the network is trained from different seeds; the fit with the highest
        ``score`` on the training rows (the information between rows and clusters that
        self-labelling maximises) is kept, as ``KMeans`` keeps the lowest inertia. Each one
        costs a whole training run. ``"auto"``: 2 for image fits (``image_shape``) of at most
        1000 optimizer steps (``max_epochs`` times the batches per epoch), such as sklearn
        digits, whose clusterings vary most between seeds; 1 otherwise, and always 1 with
        ``checkpoint_dir``, in online mode or with an ``accelerator``. An integer above 1
        cannot be combined with ``checkpoint_dir`` or an ``accelerator``.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, the initial labels, shuffling and augmentation. With an
        integer, two fits on the CPU give identical results. The global numpy, torch and
        ``random`` states are left untouched.
    verbose : int, default=0
        ``0`` prints nothing; ``1`` shows a progress bar over the epochs on stderr, with each
        epoch's loss, fraction of labels changed and smallest and largest cluster; ``2``
        prints skorch's per-epoch table (all of ``history``) on stdout instead.
    warm_start : bool, default=False
        Resume ``fit`` from the checkpoint in ``checkpoint_dir``, e.g. after a crash, and
        train until ``max_epochs`` epochs are done in all; with no checkpoint there yet, start
        afresh. Raising ``max_epochs`` continues a finished fit. The checkpoint must come from
        a fit of the same data, ``n_clusters``, ``n_heads``, ``label_mode``, ``propagation``
        and network; other parameters (``lr``, ``verbose``, ...) take their new values.
        Needs ``checkpoint_dir``.
    checkpoint_dir : str, path-like or None, default=None
        Directory where ``fit`` saves, after every epoch, all that it needs to resume: the
        module, the optimizer, the history, the labels, the label step's solver state, the
        memory bank of ``propagation`` and the random states. The file
        (``checkpoint.pt``, a pickle: load only your own) is replaced atomically, so a crash
        at any moment leaves the previous epoch's checkpoint, and a resumed fit loses at most
        the epoch in progress. It stays after the fit (the final state). Not supported with
        ``accelerator``.
    on_interrupt : {"restore", "keep"}, default="restore"
        What a ``KeyboardInterrupt`` (Ctrl-C) during ``fit`` leaves. ``"restore"``: the
        estimator as it was before ``fit`` (unfitted, or the previous fit), and the
        ``KeyboardInterrupt`` propagates. ``"keep"``: the estimator fitted from the state
        after the last completed epoch, with a warning that says so, and ``fit`` returns
        (``n_iter_`` tells how many epochs ran); if no epoch had completed, as ``"restore"``.
        ``"keep"`` holds a copy of the training state in memory. With ``n_init > 1``, ``"keep"``
        skips the initialisations not yet started and keeps the best-scored fit among those
        that ran, the interrupted one included.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,), dtype int64
        Cluster of each training sample, as ``predict`` gives it.
    net_ : SelfLabelNet
        The fitted skorch network, with its ``history``.
    best_head_ : int
        Index of the head used by ``predict`` and ``predict_proba``: the one with the lowest
        cross-entropy against its own labels on the clean training rows.
    head_losses_ : ndarray of shape (n_heads,)
        Those losses, per head. In online mode, each head's mean cross-entropy against its
        per-batch labels over the last training epoch (no label table exists).
    logit_offsets_ : ndarray of shape (n_clusters,), dtype float32
        Added to the logits of ``best_head_`` before ``predict`` takes their argmax and
        ``predict_proba`` their softmax: ``log b / sinkhorn_lambda``, where ``b`` are the
        column scalings of a last label step on the trained network's logits of the training
        rows (with the marginals that ``cluster_sizes`` says), so that ``predict`` gives that
        step's labels ``argmax Q`` on them and keeps the clusters of new rows from the same
        distribution at those sizes: the network's own argmax drifts from its balanced labels
        in the last epochs, with clusters of half their share or less. In online mode, the
        column scalings that the last training batch's labels were found with.
    embedding_dim_ : int
        Size of the embedding returned by ``transform``.
    device_ : str
        Device the network was trained on.
    n_iter_ : int
        Number of epochs run (by the fit that was kept).
    init_scores_ : ndarray of shape (n_init,)
        ``score`` of the training rows under each of the ``n_init`` fits, in the order they
        ran; the kept fit is the argmax. Set by ``fit``, not by ``partial_fit``.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during ``fit``, when ``X`` has string column names.

    See Also
    --------
    sklearn.cluster.KMeans : Clustering in the input space.
    sklearn_selflabel.sinkhorn_equipartition : The label step's solver.

    Notes
    -----
    Use ``score`` (normalised mutual information between samples and clusters under the
    model, higher is better) to compare fits without labels, e.g. in ``GridSearchCV``.

    References
    ----------
    .. [1] Y. M. Asano, C. Rupprecht and A. Vedaldi. "Self-labelling via simultaneous
       clustering and representation learning". ICLR 2020.
    .. [2] M. Cuturi. "Sinkhorn distances: lightspeed computation of optimal transport".
       NeurIPS 2013.
    .. [3] F. Wang, H. Liu, D. Guo and F. Sun. "Unsupervised representation learning by
       invariance propagation". NeurIPS 2020.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn_selflabel import SelfLabelingClusterer
    >>> X, _ = make_blobs(n_samples=90, centers=3, random_state=0)
    >>> model = SelfLabelingClusterer(n_clusters=3, max_epochs=10, random_state=0).fit(X)
    >>> model.labels_.shape
    (90,)
    >>> model.predict(X[:4]).dtype
    dtype('int64')
    >>> model.transform(X).shape
    (90, 64)
    """

    _parameter_constraints: dict = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "n_heads": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": ["array-like"],
        "embedding_dim": [Interval(Integral, 1, None, closed="left")],
        "module": [callable, None],
        "module_params": [dict, None],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "batch_size": [Interval(Integral, 2, None, closed="left"), StrOptions({"auto"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "sinkhorn_lambda": [Interval(Real, 0, None, closed="neither")],
        "sinkhorn_tol": [Interval(Real, 0, None, closed="neither")],
        "sinkhorn_max_iter": [Interval(Integral, 1, None, closed="left")],
        "n_label_steps": [Interval(Integral, 1, None, closed="left")],
        "cluster_sizes": [StrOptions({"equal", "estimated"})],
        "augment_strength": [Interval(Real, 0, None, closed="left")],
        "image_shape": ["array-like", None],
        "propagation": ["boolean", StrOptions({"auto"})],
        "propagation_neighbors": [Interval(Integral, 1, None, closed="left")],
        "propagation_hops": [Interval(Integral, 1, None, closed="left")],
        "propagation_positives": [Interval(Integral, 1, None, closed="left")],
        "propagation_weight": [Interval(Real, 0, None, closed="left")],
        "propagation_contrast": [Interval(Real, 0, None, closed="left")],
        "label_mode": [StrOptions({"offline", "online"})],
        "queue_size": [Interval(Integral, 1, None, closed="left")],
        "online_sinkhorn_iter": [Interval(Integral, 1, None, closed="left")],
        "accelerator": [HasMethods(["prepare", "backward"]), None],
        "device": [StrOptions({"auto"}), str],
        "n_init": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "checkpoint_dir": [str, os.PathLike, None],
        "on_interrupt": [StrOptions({"restore", "keep"})],
    }

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_heads: int = 8,
        hidden_layer_sizes: tuple[int, ...] = (512, 256),
        embedding_dim: int = 64,
        module: type[nn.Module] | None = None,
        module_params: dict | None = None,
        max_epochs: int | str = "auto",
        batch_size: int | str = "auto",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        sinkhorn_lambda: float = 25.0,
        sinkhorn_tol: float = 1e-3,
        sinkhorn_max_iter: int = 100,
        n_label_steps: int = 60,
        cluster_sizes: str = "estimated",
        augment_strength: float = 0.5,
        image_shape: tuple[int, ...] | None = None,
        propagation: bool | str = "auto",
        propagation_neighbors: int = 4,
        propagation_hops: int = 3,
        propagation_positives: int = 4,
        propagation_weight: float = 1.0,
        propagation_contrast: float = 0.0,
        label_mode: str = "offline",
        queue_size: int = 4096,
        online_sinkhorn_iter: int = 3,
        accelerator=None,
        device: str = "auto",
        n_init: int | str = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
        warm_start: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        on_interrupt: str = "restore",
    ) -> None:
        self.n_clusters = n_clusters
        self.n_heads = n_heads
        self.hidden_layer_sizes = hidden_layer_sizes
        self.embedding_dim = embedding_dim
        self.module = module
        self.module_params = module_params
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.sinkhorn_lambda = sinkhorn_lambda
        self.sinkhorn_tol = sinkhorn_tol
        self.sinkhorn_max_iter = sinkhorn_max_iter
        self.n_label_steps = n_label_steps
        self.cluster_sizes = cluster_sizes
        self.augment_strength = augment_strength
        self.image_shape = image_shape
        self.propagation = propagation
        self.propagation_neighbors = propagation_neighbors
        self.propagation_hops = propagation_hops
        self.propagation_positives = propagation_positives
        self.propagation_weight = propagation_weight
        self.propagation_contrast = propagation_contrast
        self.label_mode = label_mode
        self.queue_size = queue_size
        self.online_sinkhorn_iter = online_sinkhorn_iter
        self.accelerator = accelerator
        self.device = device
        self.n_init = n_init
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.checkpoint_dir = checkpoint_dir
        self.on_interrupt = on_interrupt

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> SelfLabelingClusterer:
        """Learn the network and the clustering of ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data. Sparse matrices are densified one batch at a time. A
            ``numpy.memmap`` or another out-of-core array-like (``h5py.Dataset``,
            ``dask.array.Array``, ... : anything with a numpy ``dtype``, a 2-D ``shape`` and
            row indexing) is read one batch at a time, never loaded whole; with
            ``label_mode="online"`` memory then stays bounded whatever ``n_samples``.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : SelfLabelingClusterer
            The fitted estimator.
        """
        # A failed or interrupted fit leaves the estimator exactly as it was before the call.
        state_before = self.__dict__.copy()
        try:
            return self._fit(X)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state_before)
            raise

    def _fit(self, X) -> SelfLabelingClusterer:
        X = self._checked_rows(X, reset=True, ensure_min_samples=2)
        n_samples = X.shape[0]
        if self.n_clusters > n_samples:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")
        hidden_layer_sizes = self._checked_hidden_layer_sizes()
        image_shape = self._checked_image_shape(X.shape[1])
        device = self._training_device()
        n_epochs = self._epochs(n_samples)
        seeds = self._init_seeds(n_samples, n_epochs)
        dataset = IndexedRows(X)
        # Like KMeans' n_init: train from several seeds, keep the fit with the best score
        # (only that fit's network stays in memory besides the one in training).
        best, scores = None, []
        for seed in seeds:
            net, embedding_dim, interrupted = self._train(
                dataset, hidden_layer_sizes, image_shape, device, seed, n_epochs
            )
            score = self._set_fitted_state(net, X, embedding_dim, device)
            if best is None or score > max(scores):
                # The fitted attributes (as check_is_fitted finds them), so that keeping
                # this fit at the end needs no second pass over the data.
                best = {
                    name: value
                    for name, value in vars(self).items()
                    if name.endswith("_") and not name.startswith("__")
                }
            scores.append(score)
            if interrupted:  # on_interrupt="keep": no further initialisations
                break
        vars(self).update(best)
        self.init_scores_ = np.asarray(scores)
        return self

    def _train(self, dataset, hidden_layer_sizes, image_shape, device, seed: int, n_epochs: int):
        """One initialisation: build the network from ``seed`` and train it (or resume it).

        Returns the net, its embedding size and whether an interruption cut it short.
        """
        X = dataset.X
        fingerprint = self._fingerprint(X) if self.checkpoint_dir is not None else None
        resumed_from = self._checkpoint_to_resume()
        end_state = EpochEndState(
            keep_last=self.on_interrupt == "keep",
            directory=self.checkpoint_dir,
            fingerprint=fingerprint,
            resumed_from=resumed_from,
        )
        with _isolated_torch_rng(seed, device):
            network, embedding_dim = self._build_network(X, hidden_layer_sizes, image_shape)
            net = self._build_net(network, device, seed, n_epochs, end_state=end_state)
            if resumed_from is None:
                net.fit(dataset, y=None)
            else:
                state = load_state(resumed_from, device)
                self._resume(net, state, fingerprint, device, n_epochs)
                net.partial_fit(dataset, epochs=n_epochs - len(net.history))
            interrupted = self._after_training(net, dataset, end_state, device, n_epochs)
        return net, embedding_dim, interrupted

    def _init_seeds(self, n_samples: int, n_epochs: int) -> list[int]:
        """One seed per initialisation; the first is the seed of a single fit."""
        n_init = self.n_init
        if n_init == "auto":
            single = (
                self.image_shape is None
                or self.label_mode == "online"
                or self.checkpoint_dir is not None
                or self.accelerator is not None
            )
            steps = n_epochs * self._n_batches(n_samples)
            n_init = 1 if single or steps > _MAX_RESTART_STEPS else 2
        elif n_init > 1 and self.checkpoint_dir is not None:
            raise ValueError(
                f"n_init={n_init} cannot be combined with checkpoint_dir: a checkpoint holds "
                "one training run. Use n_init=1 to checkpoint and resume."
            )
        elif n_init > 1 and self.accelerator is not None:
            raise ValueError(
                f"n_init={n_init} cannot be combined with an accelerator: processes that "
                "score their own share of the data could keep different fits. Use n_init=1."
            )
        seed = _seed_from(self.random_state)
        more = np.random.default_rng(seed).integers(np.iinfo(np.int32).max, size=n_init - 1)
        return [seed, *(int(s) for s in more)]

    def _fingerprint(self, X) -> dict:
        """What a checkpoint must match to be resumed by a fit of ``X``."""
        return {
            **data_fingerprint(X),
            "n_clusters": self.n_clusters,
            "n_heads": self.n_heads,
            "label_mode": self.label_mode,
            "propagation": self._uses_propagation(),
        }

    def _checkpoint_to_resume(self) -> bytes | None:
        if self.checkpoint_dir is not None and self.accelerator is not None:
            raise ValueError("checkpoint_dir is not supported with an accelerator.")
        if not self.warm_start:
            return None
        if self.checkpoint_dir is None:
            raise ValueError(
                "warm_start=True resumes from the checkpoint in checkpoint_dir; set "
                "checkpoint_dir (a fit that finds no checkpoint there starts afresh)."
            )
        return read_checkpoint(self.checkpoint_dir)

    def _resume(
        self, net, state: dict, fingerprint: dict, device: torch.device, n_epochs: int
    ) -> None:
        """Load a checkpoint's ``state`` into the freshly built ``net``."""
        saved = state["fingerprint"]
        differences = [
            f"{key} {saved.get(key)!r} in the checkpoint, {value!r} now"
            for key, value in fingerprint.items()
            if saved.get(key) != value
        ]
        if differences:
            raise ValueError(
                f"checkpoint_dir={str(self.checkpoint_dir)!r} holds the checkpoint of another "
                f"fit ({'; '.join(differences)}). Start afresh with warm_start=False, or use "
                "another checkpoint_dir."
            )
        n_done = len(state["history"])
        if n_done > n_epochs:
            raise ValueError(
                f"The checkpoint in checkpoint_dir holds {n_done} epochs, more than "
                f"max_epochs={n_epochs}."
            )
        net.initialize()
        try:
            restore_training_state(net, state)
        except RuntimeError as exc:  # load_state_dict: weights of a different network
            raise ValueError(
                "The checkpoint in checkpoint_dir holds a different network (module, "
                f"hidden_layer_sizes, embedding_dim or image_shape changed): {exc}"
            ) from None
        restore_torch_rng(state, device)

    def _after_training(
        self, net, dataset, end_state: EpochEndState, device, n_epochs: int
    ) -> bool:
        """Check that training ran to the end; act on an interruption as ``on_interrupt`` says.

        Returns whether training was cut short (and the net kept, ``on_interrupt="keep"``).

        skorch ends training quietly on a KeyboardInterrupt (Ctrl-C) and returns, so a net
        cut off mid-training is told apart by its count of completed epochs.
        """
        last_state = end_state.release()
        n_done = end_state.n_completed_epochs_
        if n_done >= n_epochs:
            return False
        if last_state is None:  # on_interrupt="restore", or no epoch had completed
            raise KeyboardInterrupt(
                f"fit was interrupted after {n_done} of {n_epochs} epochs; the "
                "estimator is left as it was before fit."
            )
        restore_training_state(net, load_state(last_state, device))
        net.notify("on_train_end", X=dataset, y=None)
        warnings.warn(
            f"fit was interrupted in epoch {n_done + 1} of {n_epochs}; the estimator "
            f"is fitted from the state after epoch {n_done}, the last completed one "
            "(on_interrupt='keep').",
            UserWarning,
            stacklevel=6,
        )
        return True

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None) -> SelfLabelingClusterer:
        """Train one epoch on the chunk ``X``, continuing from the previous calls (or ``fit``).

        The first call builds the network, with the input standardisation estimated on that
        chunk. In online mode each batch of the chunk gets its labels from Sinkhorn over the
        batch plus the queue, which carries over from call to call: the natural mode for
        streams and out-of-core data. In offline mode a label step over the whole chunk
        (Sinkhorn on its clean logits, warm-started from the previous chunk) gives the chunk's
        labels, and the epoch trains against them; memory then grows with the chunk size.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            A chunk of training data, at least two rows; out-of-core inputs are read by batch,
            as in ``fit``.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : SelfLabelingClusterer
            The updated estimator; ``labels_`` holds the clusters of this chunk's rows.
        """
        first_call = not hasattr(self, "net_")
        X = self._checked_rows(X, reset=first_call, ensure_min_samples=2)
        if self.accelerator is not None:
            raise ValueError("partial_fit does not support an accelerator; use fit.")
        if not first_call and isinstance(self.net_, OnlineSelfLabelNet) != (
            self.label_mode == "online"
        ):
            raise ValueError(
                f"label_mode={self.label_mode!r} differs from the mode the network was trained "
                "in; call fit to start over in the new mode."
            )
        device = self._training_device() if first_call else torch.device(self.device_)
        seed = _seed_from(self.random_state)
        # Each call draws its augmentations from its own seed, so a repeated sequence of
        # calls with an integer random_state is reproducible.
        with _isolated_torch_rng(seed + (0 if first_call else self.n_iter_), device):
            if first_call:
                image_shape = self._checked_image_shape(X.shape[1])
                network, embedding_dim = self._build_network(
                    X, self._checked_hidden_layer_sizes(), image_shape
                )
                net = self._build_net(network, device, seed, self._epochs(len(X)), chunked=True)
            else:
                net, embedding_dim = self.net_, self.embedding_dim_
                if type(dict(net.callbacks_)["label_step"]) is LabelStep:
                    # Continuing a full-data fit: its scheduled steps index the fit's rows.
                    net.set_params(callbacks__label_step=self._chunk_label_step().initialize())
            net.partial_fit(IndexedRows(X), epochs=1)
        self._set_fitted_state(net, X, embedding_dim, device)
        return self

    def _set_fitted_state(self, net, X, embedding_dim: int, device) -> float:
        """Make ``net`` the fitted model of the training rows ``X``.

        Returns the ``score`` of ``X``, found in the same inference pass as ``labels_``.
        """
        # Inference never switches a network that is in eval mode (see evaluate_rows), so
        # predict calls from several threads at once only read it.
        net.module_.eval()
        label_step = dict(net.callbacks_)["label_step"]
        if isinstance(net, OnlineSelfLabelNet):
            head_losses = label_step.head_losses_
            best_head = int(np.argmin(head_losses))
            log_scalings = label_step.sinkhorn_.log_scaling[best_head]
        else:
            embedding, logits = net.evaluate_rows(X, self._batch_rows(), output="both")
            head_losses = net.head_losses(logits)
            best_head = int(np.argmin(head_losses))
            state = label_step.solver_state_
            weights = None
            if self.cluster_sizes == "estimated":
                weights = estimated_cluster_weights(
                    embedding, net.label_table_[best_head], self.n_clusters
                )
            # One more label step, on the trained network, sets the cluster sizes that
            # predict gives: argmax Q = argmax (lamb * logits + log b), rows scaled or not.
            result = sinkhorn_equipartition(
                logits[best_head],
                lamb=self.sinkhorn_lambda,
                tol=self.sinkhorn_tol,
                max_iter=self.sinkhorn_max_iter,
                cluster_weights=weights,
                init=None if state is None else state[best_head],
            )
            log_scalings = result.state
        self.net_ = net
        self.best_head_ = best_head
        self.head_losses_ = head_losses
        self.logit_offsets_ = _to_numpy(log_scalings / self.sinkhorn_lambda).astype(np.float32)
        self.embedding_dim_ = embedding_dim
        self.device_ = str(device)
        self.n_iter_ = len(net.history)
        self.labels_, score = self._labels_and_score(X)
        return score

    def _labels_and_score(self, X) -> tuple[np.ndarray, float]:
        """``predict`` and ``score`` of the rows ``X`` in one pass, in memory of the labels."""
        proba_sum = torch.zeros(self.n_clusters, dtype=torch.float64, device=self.net_.device)
        entropy_sum = torch.zeros((), dtype=torch.float64, device=self.net_.device)

        def labels_and_sums(logits: torch.Tensor) -> np.ndarray:
            log_proba = torch.log_softmax(logits.double(), dim=1)
            proba = log_proba.exp()
            proba_sum.add_(proba.sum(dim=0))
            entropy_sum.sub_((proba * log_proba).sum())
            return _labels(logits)

        labels = self._batched_outputs(X, "logits", labels_and_sums)
        n_rows = X.shape[0]
        information = _information_of(_to_numpy(proba_sum / n_rows), entropy_sum.item() / n_rows)
        return labels, _normalised_information(information, self.n_clusters)

    def _checked_rows(self, X, *, reset: bool, ensure_min_samples: int = 1):
        """``validate_data``, except that out-of-core inputs are checked chunk by chunk."""
        if is_out_of_core(X):
            check_out_of_core(X, ensure_min_samples=ensure_min_samples)
            validate_data(self, X, skip_check_array=True, reset=reset)
            return X
        return validate_data(
            self,
            X,
            accept_sparse="csr",
            dtype=_INPUT_DTYPES,
            reset=reset,
            ensure_min_samples=ensure_min_samples,
        )

    def _training_device(self) -> torch.device:
        if self.accelerator is None:
            return _resolve_device(self.device)
        if self.accelerator.device_placement:
            raise ValueError(
                "Create the accelerator with Accelerator(device_placement=False): the estimator "
                "places the network and its batches on accelerator.device itself."
            )
        if self._uses_propagation():
            raise ValueError(
                "propagation is not supported with an accelerator; set propagation=False "
                "or use label_mode='online'."
            )
        return torch.device(self.accelerator.device)

    def _epochs(self, n_samples: int) -> int:
        """``max_epochs``, with ``"auto"`` resolved for ``n_samples`` training rows."""
        if self.max_epochs != "auto":
            return self.max_epochs
        if self.image_shape is None:
            return 120
        # A small image set needs more passes for as many optimizer steps as a large one.
        n_batches = self._n_batches(n_samples)
        return int(np.clip(math.ceil(_MIN_IMAGE_STEPS / n_batches), 60, 120))

    def _uses_propagation(self) -> bool:
        """Whether the fit trains with invariance propagation (``"auto"``: for images)."""
        if self.label_mode != "offline":
            return False
        if self.propagation == "auto":
            return self.image_shape is not None
        return bool(self.propagation)

    def _checked_hidden_layer_sizes(self) -> tuple[int, ...]:
        sizes = np.asarray(self.hidden_layer_sizes).reshape(-1)
        if not all(isinstance(s, Integral) and s >= 1 for s in sizes.tolist()):
            raise ValueError(
                "hidden_layer_sizes must be a sequence of positive integers, got "
                f"{self.hidden_layer_sizes!r}."
            )
        return tuple(int(s) for s in sizes)

    def _checked_image_shape(self, n_features: int) -> tuple[int, int, int] | None:
        """``image_shape`` as ``(C, H, W)``, checked against the number of features."""
        if self.image_shape is None:
            return None
        shape = np.asarray(self.image_shape).reshape(-1).tolist()
        if not (len(shape) in (2, 3) and all(isinstance(s, Integral) and s >= 1 for s in shape)):
            raise ValueError(
                "image_shape must be (height, width) or (channels, height, width) of positive "
                f"integers, got {self.image_shape!r}."
            )
        shape = ([1] if len(shape) == 2 else []) + [int(s) for s in shape]
        if int(np.prod(shape)) != n_features:
            raise ValueError(
                f"image_shape={tuple(self.image_shape)} holds {int(np.prod(shape))} pixels but X "
                f"has {n_features} features; rows must be images flattened in C, H, W order."
            )
        return tuple(shape)

    def _build_network(self, X, hidden_layer_sizes, image_shape) -> tuple[SelfLabelNetwork, int]:
        n_features = X.shape[1]
        if self.module is None and image_shape is not None:
            encoder = ConvEncoder(image_shape, embedding_dim=self.embedding_dim)
        elif self.module is None:
            encoder = MLPEncoder(n_features, hidden_layer_sizes, self.embedding_dim)
        else:
            encoder = self.module(n_features=n_features, **(self.module_params or {}))
            if not isinstance(encoder, nn.Module):
                raise TypeError(
                    f"module must build a torch.nn.Module, got {type(encoder).__name__}."
                )
        embedding_dim = _output_size(encoder, n_features)
        mean, scale = _feature_mean_and_scale(X, image_shape)
        network = SelfLabelNetwork(
            encoder,
            MultiHeadClassifier(embedding_dim, self.n_clusters, self.n_heads),
            torch.from_numpy(mean),
            torch.from_numpy(scale),
            TabularAugment(self.augment_strength)
            if image_shape is None
            else ImageAugment(image_shape, self.augment_strength),
        )
        return network, embedding_dim

    def _build_net(
        self,
        network: SelfLabelNetwork,
        device: torch.device,
        seed: int,
        n_epochs: int,
        *,
        chunked: bool = False,
        end_state: EpochEndState | None = None,
    ):
        if self.label_mode == "online":
            label_step = OnlineLabelStep(
                n_clusters=self.n_clusters,
                n_heads=self.n_heads,
                queue_size=self.queue_size,
                lamb=self.sinkhorn_lambda,
                n_iter=self.online_sinkhorn_iter,
            )
        elif chunked:
            label_step = self._chunk_label_step()
        else:
            epochs = label_step_epochs(n_epochs, self.n_label_steps)
            label_step = LabelStep(
                frozenset(epochs.tolist()),
                seed=seed,
                estimate_sizes_from=(
                    _ESTIMATED_SIZES_FROM * epochs.max()
                    if self.cluster_sizes == "estimated"
                    else None
                ),
                **self._offline_label_params(),
            )
        callbacks = [("label_step", label_step), ("finite_loss", FiniteLossGuard())]
        if self._uses_propagation():
            refresh = PropagationRefresh(
                label_step.epochs,
                n_neighbors=self.propagation_neighbors,
                n_hops=self.propagation_hops,
                n_positives=self.propagation_positives,
                label_weight=self.propagation_weight,
                contrast_weight=self.propagation_contrast,
                batch_size=self._batch_rows(),
                seed=seed,
                **_PROPAGATION_SETTINGS,
            )
            callbacks.append(("propagation", refresh))
        if self.verbose == 1:
            main_process = self.accelerator is None or self.accelerator.is_local_main_process
            callbacks.append(("progress", EpochProgress(disable=not main_process)))
        if end_state is not None:
            # Last, so that an epoch counts as completed once everything above has run.
            callbacks.append(("epoch_end_state", end_state))
        return self._net_class()(
            module=network,
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=self.lr,
            optimizer__weight_decay=self.weight_decay,
            max_epochs=n_epochs,
            batch_size=self._batch_rows(),
            train_split=None,
            iterator_train=shuffled_batch_loader,
            iterator_train__rng=np.random.default_rng(seed),
            callbacks=callbacks,
            device=str(device),
            verbose=int(self.verbose >= 2),  # skorch's per-epoch table
            **self._accelerator_params(),
        )

    def _accelerator_params(self) -> dict:
        if self.accelerator is None:
            return {}
        # skorch's AccelerateMixin prints through accelerator.print whatever verbose says.
        sink = self.accelerator.print if self.verbose >= 2 else print
        return {"accelerator": self.accelerator, "callbacks__print_log__sink": sink}

    def _chunk_label_step(self) -> ChunkLabelStep:
        return ChunkLabelStep(**self._offline_label_params())

    def _offline_label_params(self) -> dict:
        return dict(
            n_clusters=self.n_clusters,
            n_heads=self.n_heads,
            lamb=self.sinkhorn_lambda,
            tol=self.sinkhorn_tol,
            max_iter=self.sinkhorn_max_iter,
            batch_size=self._batch_rows(),
        )

    def _n_batches(self, n_samples: int) -> int:
        """Training mini-batches per epoch over ``n_samples`` rows."""
        return math.ceil(n_samples / self._batch_rows())

    def _batch_rows(self) -> int:
        if self.batch_size == "auto":
            return 1024 if self.label_mode == "online" else 256
        return self.batch_size

    def _net_class(self) -> type[SelfLabelNet]:
        online = self.label_mode == "online"
        if self.accelerator is None:
            return OnlineSelfLabelNet if online else SelfLabelNet
        # skorch.hf is slow to import; only accelerated fits pay for it.
        from ._accelerate import AcceleratedOnlineSelfLabelNet, AcceleratedSelfLabelNet

        return AcceleratedOnlineSelfLabelNet if online else AcceleratedSelfLabelNet

    # ------------------------------------------------------------ inference

    def _batched_outputs(self, X, output: str, finish) -> np.ndarray:
        """``finish`` of the network's ``output`` for each batch of rows, written into one array.

        Memory is the result plus one batch, for any input size. ``output="logits"`` gives
        the logits of ``best_head_`` plus ``logit_offsets_``; ``"embedding"`` the embedding.
        """
        head = self.best_head_ if output == "logits" else None
        offsets = None
        if output == "logits":
            offsets = torch.from_numpy(self.logit_offsets_).to(self.net_.device)
        result = None
        batch_rows = self._batch_rows()
        for start in range(0, X.shape[0], batch_rows):
            rows = dense_rows(X, start, start + batch_rows)
            outputs = self.net_.evaluate_rows(rows, len(rows), output=output, head=head)
            part = finish(outputs if offsets is None else outputs + offsets)
            if result is None:
                result = np.empty((X.shape[0], *part.shape[1:]), dtype=part.dtype)
            result[start : start + len(rows)] = part
        return result

    def _inference(self, X, method: str, output: str, finish, n_columns: int | None, dtype):
        """Shared body of ``predict``, ``predict_proba`` and ``transform``."""
        check_is_fitted(self)
        if is_dask_array(X):
            return map_row_blocks(self, method, X, dtype=dtype, n_columns=n_columns)
        return self._batched_outputs(self._checked_rows(X, reset=False), output, finish)

    def predict(self, X) -> np.ndarray:
        """Cluster of each row of ``X``, from the head ``best_head_``.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            Read one batch at a time. A ``dask.array.Array`` gives a dask array, computed
            block by block (on a Dask cluster, if one is in use) when asked for.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,), dtype int64
            Values in ``0 .. n_clusters - 1``: the argmax of the logits plus
            ``logit_offsets_``.
        """
        return self._inference(X, "predict", "logits", _labels, None, np.int64)

    def predict_proba(self, X) -> np.ndarray:
        """Cluster probabilities ``p(y | x)`` of each row of ``X``, from the head ``best_head_``.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            As in ``predict``.

        Returns
        -------
        proba : ndarray or dask array of shape (n_samples, n_clusters), dtype float64
            Rows sum to one: the softmax of the logits plus ``logit_offsets_``, i.e. the
            network's probabilities reweighted by the cluster prior that balances the
            training rows.
        """
        return self._inference(
            X, "predict_proba", "logits", _probabilities, self.n_clusters, np.float64
        )

    def transform(self, X) -> np.ndarray:
        """The learned embedding ``Φ(X)``.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            As in ``predict``.

        Returns
        -------
        embedding : ndarray or dask array of shape (n_samples, embedding_dim_), dtype float32
        """
        check_is_fitted(self)  # before embedding_dim_ is read
        return self._inference(
            X, "transform", "embedding", _to_numpy, self.embedding_dim_, np.float32
        )

    def score(self, X, y=None) -> float:
        """Normalised mutual information between samples and clusters under the model.

        ``I(x; y) / log K`` with ``I(x; y) = H(mean_i p(y|x_i)) - mean_i H(p(y|x_i))``, the
        quantity that self-labelling maximises: 1 for confident predictions spread evenly over
        all ``K`` clusters, 0 when every row gets the same distribution. Higher is better. It
        ranks fits of the same ``n_clusters`` by how confidently and evenly they separate the
        data; across different ``n_clusters`` it tends to favour fewer clusters (they become
        confident sooner), so choose ``n_clusters`` with a scoring of your own, e.g. labels or
        ``silhouette_score``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        score : float in ``[0, 1]``
            0 when ``n_clusters == 1``.
        """
        return _normalised_information(_information(self.predict_proba(X)), self.n_clusters)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "net_" in state:
            # A network pickled on CUDA unpickles onto the CPU where CUDA is absent (skorch
            # warns); the estimator follows it.
            self.device_ = str(self.net_.device)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "net_")

    @property
    def _n_features_out(self) -> int:
        return self.embedding_dim_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags


def _labels(logits: torch.Tensor) -> np.ndarray:
    return logits.argmax(dim=1).cpu().numpy()


def _probabilities(logits: torch.Tensor) -> np.ndarray:
    return torch.softmax(logits.double(), dim=1).cpu().numpy()


def _to_numpy(embedding: torch.Tensor) -> np.ndarray:
    return embedding.cpu().numpy()


def _information(proba: np.ndarray) -> float:
    """Mutual information between the row index and the label under ``proba``."""
    mean_entropy = -np.mean(np.sum(proba * np.log(np.clip(proba, 1e-300, None)), axis=1))
    return _information_of(proba.mean(axis=0), mean_entropy)


def _information_of(marginal: np.ndarray, mean_entropy: float) -> float:
    """``H(marginal) - mean_entropy``: the information from the label marginal and the mean
    entropy of the rows' label distributions."""
    entropy_of_mean = -np.sum(marginal * np.log(np.clip(marginal, 1e-300, None)))
    return max(entropy_of_mean - mean_entropy, 0.0)


def _normalised_information(information: float, n_clusters: int) -> float:
    """``score``: ``information`` divided by its maximum, ``log n_clusters``."""
    if n_clusters == 1:
        return 0.0  # one cluster carries no information about the samples
    return float(information / np.log(n_clusters))


def _feature_mean_and_scale(X, image_shape=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (1 where constant), float32, sparse-aware.

    For images the statistics are per channel, spread over that channel's pixels, so that a
    shifted image is standardised like the original.
    """
    if sp.issparse(X):
        mean, var = mean_variance_axis(X, axis=0)
    else:
        mean, var = column_mean_and_variance(X)
    if image_shape is not None:
        channel_mean = mean.reshape(image_shape[0], -1).mean(axis=1, keepdims=True)
        # total variance of the channel = mean within-pixel variance + variance of pixel means
        channel_var = var.reshape(image_shape[0], -1) + mean.reshape(image_shape[0], -1) ** 2
        channel_var = channel_var.mean(axis=1, keepdims=True) - channel_mean**2
        pixels = np.ones((1, int(np.prod(image_shape[1:]))))
        mean, var = (channel_mean * pixels).ravel(), (channel_var * pixels).ravel()
    scale = np.sqrt(var)
    scale[scale < 1e-12 * np.maximum(np.abs(mean), 1.0)] = 1.0
    return mean.astype(np.float32), scale.astype(np.float32)


def _output_size(encoder: nn.Module, n_features: int) -> int:
    """Embedding size of ``encoder``, read from one forward pass on two zero rows."""
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        out = encoder(torch.zeros(2, n_features))
    encoder.train(was_training)
    if out.ndim != 2 or out.shape[0] != 2:
        raise ValueError(
            "module must map (batch, n_features) to (batch, embedding_dim); got output shape "
            f"{tuple(out.shape)} for input (2, {n_features})."
        )
    return int(out.shape[1])


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


@contextmanager
def _isolated_torch_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch inside a fork of its RNG state, so the caller's global state is untouched."""
    cuda_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        if cuda_devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield
