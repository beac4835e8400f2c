"""``SelfLabelingClusterer``: the scikit-learn face of self-labelling deep clustering.

The estimator checks its input, resolves its settings once (``_settings``), and hands them to
training (``_training``), which builds the network (``_build``), runs the label mode that the
settings picked (``_offline``, ``_online``) and returns the fitted attributes; ``predict``,
``predict_proba``, ``transform`` and ``score`` are batched inference (``_inference``).
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Integral, Real
from typing import Literal

import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    ClusterMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from torch import nn

from ._dask import is_dask_array, map_row_blocks
from ._data import check_rows
from ._inference import METHODS, information_score, method_outputs
from ._persistence import save_model
from ._settings import estimated_cluster_count, resolve_settings, row_profile
from ._training import FittedModel, Interruption, fit_initializations, train_chunk


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
    Labels start as a random equal split, or for non-negative rows (pixels), small tables and
    documents as a clustering of the rows (``init``). Training sees augmented views of the rows
    (noise and feature masking, dropped terms, or affine warps of images with ``image_shape``);
    the label step, ``predict`` and ``transform`` see clean rows. With ``image_shape`` and for
    non-negative rows, invariance propagation also pulls each row towards the hardest of the
    rows reachable from it through nearest-neighbour links in the embedding.

    The network is a skorch ``NeuralNet`` built in ``fit`` and kept as ``net_``; its
    ``history`` records, per epoch, the loss, whether a label step ran, the fraction of labels
    it changed and the smallest and largest cluster size. The user guide explains each
    parameter's role and the reasons for its default.

    Parameters
    ----------
    n_clusters : int or "auto", default=8
        Number of clusters ``K``. ``"auto"``: estimated by ``fit`` before training, as the
        number of dense groups that HDBSCAN finds in a neighbour layout of the rows, each of
        at least 0.5% of the rows and half its equal share (the user guide's "Choosing the
        number of clusters"); the fit then runs with that number (``n_clusters_``) as a fit
        given it would. Offline ``fit`` only, not with ``accelerator``.
    max_clusters : int or None, default=None
        With ``n_clusters="auto"``, the largest number the estimate may give; None: half the
        number of rows. Ignored otherwise.
    n_heads : int, default=8
        Number of classifier heads, each with its own labels. ``predict`` uses one of them,
        ``best_head_``.
    hidden_layer_sizes : tuple of int, default=(512, 256)
        Widths of the hidden layers of the default MLP encoder.
    embedding_dim : int, default=64
        Size of the embedding ``Φ(X)`` of the default encoders (the output of ``transform``).
    module : type of torch.nn.Module or None, default=None
        Your own encoder class, used instead of the default one. It is called as
        ``module(n_features=n_features_in_, **module_params)`` and must map a float32 tensor of
        shape ``(batch, n_features)`` to ``(batch, embedding_dim)``; the embedding size is read
        from a forward pass. ``hidden_layer_sizes`` and ``embedding_dim`` are then ignored.
    module_params : dict or None, default=None
        Keyword arguments for ``module``. Tune them with ``GridSearchCV`` by listing dicts.
    max_epochs : int or "auto", default="auto"
        Number of training epochs (passes over the data). ``"auto"``: 40 from a start that
        clusters the rows (the start that ``init`` gives, unless it is the random split), which
        the network refines rather than finds; from SeLa's random split (``init="random"``,
        ``init="auto"`` on image sets too small for the layout start, and online mode), enough
        epochs for at least 480 optimizer steps (960 with ``image_shape``), between 60 and 120.
    batch_size : int or "auto", default="auto"
        Mini-batch size for training and the batch size of inference. ``"auto"``: 256 in
        offline mode, 1024 in online mode.
    lr : float, default=1e-3
        Learning rate of the Adam optimizer.
    weight_decay : float, default=1e-4
        L2 weight decay of the optimizer.
    sinkhorn_lambda : float, default=25.0
        Inverse entropic regularisation ``λ`` of the label step: larger is closer to the hard
        assignment problem, smaller is smoother.
    sinkhorn_tol : float, default=1e-3
        Tolerance of the Sinkhorn iterations on the relative cluster-mass error (independent of
        ``n_samples``).
    sinkhorn_max_iter : int, default=100
        Iteration cap of each label step; ``history`` records each step's ``sinkhorn_error``.
    n_label_steps : int, default=60
        Number of label steps, placed after epoch ``(max_epochs - 1) * (i / n_label_steps)**2``
        for ``i = 0 .. n_label_steps - 1`` (coinciding epochs merge).
    n_steps_no_change : int or None, default=3
        ``fit`` ends before ``max_epochs`` once this many consecutive label steps have changed
        no label (``n_iter_`` tells the epochs run); None trains every epoch. Offline
        ``label_mode`` on one process only.
    cluster_sizes : {"equal", "estimated"}, default="estimated"
        Cluster sizes that the label steps aim at. ``"equal"``: SeLa's equipartition in every
        step, and in the last one, run on the trained network to fix what ``predict`` gives
        (see ``logit_offsets_``). ``"estimated"``: each step keeps the sizes of the head's
        current clusters, none below a fifth of the equal share, and the last step tops any
        cluster short of that floor up to it. From ``init="random"``, the steps aim at equal
        sizes up to half the epoch of the last scheduled step, where one step re-partitions
        every head by the embedding's nearest-neighbour links
        (``propagation.neighbor_link_partition``); from a clustering of the rows, the steps
        keep its sizes from the first on. Offline mode only; a ``partial_fit`` chunk is
        labelled with equal sizes, its last step with estimated ones.
    init : {"auto", "random", "kmeans", "mixture", "layout"}, default="auto"
        The labels that an offline ``fit`` starts from, for every head from a seed of its
        own or one clustering for all. ``"random"``: SeLa's random equal split, per head.
        ``"kmeans"``: KMeans of the L2-normalised rows (cosine geometry), per head.
        ``"mixture"``: a Gaussian mixture with full covariances, shrunk by the amount that
        cross-validated likelihood picks, of the rows as the network sees them, fitted on at
        most 10,000 of them and their first 50 principal components; dense rows only.
        ``"layout"``: a clustering of a layout of the rows, as N2D finds it: an autoencoder's codes,
        the nearest-neighbour links that the codes and the input rows agree on, UMAP's layout of
        those links in ``n_clusters`` dimensions, cut by a Gaussian mixture into ``2 * n_clusters``
        parts that merge by their links; dense rows only. From ``"mixture"`` or ``"layout"`` no
        label step runs in the first quarter of the epochs, nor while the network's argmax disagrees
        with over 2% of the labels (10% for images), and from ``"mixture"`` noise views are half as
        strong. ``"auto"``: the start of the kind's recipe (the user guide's "Flat rows"):
        ``"mixture"`` for tabular and embedding rows, ``"mixture"`` for non-negative dense rows
        where its clusters keep 98% of the input rows' neighbour links, else of it and ``"layout"``
        the one whose clusters keep more, ``"kmeans"`` for sparse rows, ``"layout"`` for images
        (``image_shape``) of more than 5,000 rows and ``"random"`` for fewer. Online mode and
        ``partial_fit`` need ``"auto"``: they label each batch or chunk from the network.
    augment_strength : float, default=0.5
        Strength of the training views. Tabular rows: Gaussian noise of this
        many standard deviations per feature (half as many from ``init="mixture"``), and each
        feature masked to its mean with probability half the noise's standard deviation.
        Sparse rows (``input_kind="sparse"``): each stored entry (term) dropped with
        probability ``augment_strength / 2``. Images (``image_shape``): the scale of the
        affine jitter (at 0.5, up to 12.5% of the side, 15 degrees, 10% of scale and 0.15 of
        shear). Wide dense rows (pixels, embeddings) train on neighbour views instead.
    input_kind : {"auto", "tabular", "embedding", "nonnegative", "sparse"}, default="auto"
        What flat rows (no ``image_shape``) are, which sets how they are scaled, how their
        neighbours are found and how training sees them. ``"tabular"``: tables (fewer than 64
        features, or wide columns on scales of their own), each feature standardised unless
        they are centred coordinates on a common scale, Euclidean neighbours, a Gaussian
        mixture start and noise views. ``"embedding"``: 64 or more signed features (another
        model's outputs), one scale for all, cosine neighbours. ``"nonnegative"``: 64 or more
        non-negative features on a common range (pixels, histograms), one scale for all,
        cosine neighbours. Both wide kinds train with invariance propagation and neighbour
        views and start from a mixture or their layout. ``"sparse"``: non-negative sparse rows
        (TF-IDF, counts), each L2-normalised, cosine neighbours, batches that stay sparse into
        the first layer, KMeans initial labels and views that drop terms. ``"auto"`` detects
        the kind from the data (the user guide gives the rule and each kind's recipe).
    image_shape : tuple of int or None, default=None
        ``(height, width)`` or ``(channels, height, width)`` when the rows are images
        flattened in that order. It turns on image-aware mode: training views are random
        affine warps, the encoder is a small convolutional network (``ConvEncoder``, unless
        ``module`` is given), the input is standardised per channel rather than per pixel, and
        ``propagation="auto"`` is on.
    propagation : bool or "auto", default="auto"
        Invariance propagation, offline mode only: each row is also trained towards the
        current labels of its hard positives, the least similar of the rows reached by
        ``propagation_hops`` hops along the ``propagation_neighbors`` nearest-neighbour links
        (first among the standardised input rows, then, at each label step, in a memory bank
        of the embeddings). ``"auto"``: on with ``image_shape`` and for wide dense rows
        (``input_kind`` ``"nonnegative"`` or ``"embedding"``), off for tables and sparse rows.
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
        4096 random negatives), in which a row and its positives count as one class.
    label_mode : {"offline", "online"}, default="offline"
        How the labels are found. ``"offline"``: on the schedule of ``n_label_steps``,
        Sinkhorn over the logits of all training rows rewrites an ``(n_heads, n_samples)``
        label table. ``"online"``: each training batch gets its labels from a few Sinkhorn
        sweeps over the batch plus a queue of the most recent ``queue_size`` rows' logits,
        so that memory does not grow with ``n_samples`` (millions of rows, data on disk,
        streams with ``partial_fit``). ``n_label_steps``, ``sinkhorn_tol``,
        ``sinkhorn_max_iter``, ``cluster_sizes``, ``init`` and ``propagation`` apply to
        offline mode.
    queue_size : int, default=4096
        Online mode: rows of recent batches whose logits join each batch's Sinkhorn problem.
    online_sinkhorn_iter : int, default=3
        Online mode: Sinkhorn sweeps per batch, each call starting from the previous batch's
        column scalings.
    accelerator : accelerate.Accelerator or None, default=None
        Train through Hugging Face accelerate (skorch's ``AccelerateMixin``), e.g. on several
        GPUs or nodes with ``accelerate launch``. Create it as
        ``Accelerator(device_placement=False)``: the estimator places the network and the
        batches on ``accelerator.device`` itself, and ``device`` is then ignored. Each process
        trains on its share of the batches; the online label step sums its cluster masses
        over processes. Needs ``propagation=False`` in offline mode.
    device : str, default="auto"
        Torch device; ``"auto"`` picks CUDA when it is available and the rows hold at least
        2,000,000 values (``n_samples * n_features``), else the CPU, which is faster for
        smaller problems.
    mixed_precision : bool or "auto", default="auto"
        Train with bfloat16 autocast (the weights stay float32; ``predict``, ``transform``,
        ``score`` and the last label step compute in float32). ``"auto"``: for image fits
        (``image_shape``) and fits from ``init="layout"`` (its autoencoder too) on a device that
        computes bfloat16 natively (CUDA, or a CPU with AVX-512 BF16 or AMX), else off. ``True`` on
        a device without native bfloat16 is slow.
    n_init : int or "auto", default="auto"
        Number of times the network is trained from different seeds; the fit with the highest
        ``score`` on the training rows is kept, as ``KMeans`` keeps the lowest inertia.
        ``"auto"``: 2 for image fits (``image_shape``) from the random split of at most 1000
        optimizer steps (``max_epochs`` times the batches per epoch), else 1, and always 1 with
        ``checkpoint_dir``, in online mode or with an ``accelerator``, none of which an
        integer above 1 can be combined with.
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
        (``checkpoint.selflabel``, read without running code from it) is replaced atomically,
        so a crash at any moment leaves the previous epoch's checkpoint, and a resumed fit
        loses at most the epoch in progress. It stays after the fit (the final state). Not
        supported with ``accelerator``.
    on_interrupt : {"restore", "keep"}, default="restore"
        What a ``KeyboardInterrupt`` (Ctrl-C) during ``fit`` leaves. ``"restore"``: the
        estimator as it was before ``fit`` (unfitted, or the previous fit), and the
        ``KeyboardInterrupt`` propagates. ``"keep"``: the estimator fitted from the state
        after the last completed epoch, with a warning that says so, and ``fit`` returns
        (``n_iter_`` tells how many epochs ran); if no epoch had completed, as ``"restore"``.
        ``"keep"`` holds a copy of the training state in memory. With ``n_init > 1``, ``"keep"``
        skips the initialisations not yet started and keeps the best-scored fit among those
        that ran, the interrupted one included. An interrupted ``partial_fit`` call always
        leaves the estimator as it was before the call.

    Attributes
    ----------
    labels_ : ndarray of shape (n_samples,), dtype int64
        Cluster of each training sample, as ``predict`` gives it.
    n_clusters_ : int
        Number of clusters of the fitted model: ``n_clusters``, or its estimate.
    n_clusters_curve_ : dict or None
        With ``n_clusters="auto"``, the estimate's curve: ``"min_cluster_size"`` (ndarray of
        the minimum cluster sizes, in rows, that HDBSCAN was run with), ``"n_clusters"`` (the
        clusters counted at each) and ``"selected"`` (the index of the size that gives
        ``n_clusters_``); ``plotting.plot_cluster_count`` draws it. None otherwise.
    net_ : SelfLabelNet
        The fitted skorch network, with its ``history``.
    best_head_ : int
        Index of the head used by ``predict`` and ``predict_proba``. Where the heads started
        from clusterings of their own (``init="random"`` or ``"kmeans"``), the one whose
        labels of the training rows agree best with the other heads' (the highest mean
        adjusted Rand index; of equals, the lowest loss); where they all started from one
        (``"mixture"``, ``"layout"``), and in online mode, the one with the lowest loss.
    head_losses_ : ndarray of shape (n_heads,)
        Each head's cross-entropy against its own labels on the clean training rows; in
        online mode, its mean cross-entropy against its per-batch labels over the last
        training epoch (no label table exists).
    logit_offsets_ : ndarray of shape (n_clusters,), dtype float32
        Added to the logits of ``best_head_`` before ``predict`` takes their argmax and
        ``predict_proba`` their softmax: ``log b / sinkhorn_lambda``, where ``b`` are the
        column scalings of a last label step on the trained network's logits of the training
        rows (with the marginals that ``cluster_sizes`` says), so that ``predict`` gives that
        step's labels ``argmax Q`` on them. In online mode, the column scalings that the last
        training batch's labels were found with.
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
    .. [4] R. McConville, R. Santos-Rodriguez, R. J. Piechocki and I. Craddock. "N2D: (not
       too) deep clustering via clustering the local manifold of an autoencoded embedding".
       ICPR 2020.
    .. [5] L. McInnes, J. Healy and J. Melville. "UMAP: Uniform manifold approximation and
       projection for dimension reduction". arXiv:1802.03426, 2018.
    .. [6] R. J. G. B. Campello, D. Moulavi and J. Sander. "Density-based clustering based on
       hierarchical density estimates". PAKDD 2013.

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
        "n_clusters": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_clusters": [Interval(Integral, 2, None, closed="left"), None],
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
        "n_steps_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "cluster_sizes": [StrOptions({"equal", "estimated"})],
        "init": [StrOptions({"auto", "random", "kmeans", "mixture", "layout"})],
        "augment_strength": [Interval(Real, 0, None, closed="left")],
        "input_kind": [StrOptions({"auto", "tabular", "embedding", "nonnegative", "sparse"})],
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
        "mixed_precision": ["boolean", StrOptions({"auto"})],
        "n_init": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "checkpoint_dir": [str, os.PathLike, None],
        "on_interrupt": [StrOptions({"restore", "keep"})],
    }

    def __init__(
        self,
        n_clusters: int | Literal["auto"] = 8,
        *,
        max_clusters: int | None = None,
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
        n_steps_no_change: int | None = 3,
        cluster_sizes: str = "estimated",
        init: str = "auto",
        augment_strength: float = 0.5,
        input_kind: str = "auto",
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
        mixed_precision: bool | str = "auto",
        n_init: int | str = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
        warm_start: bool = False,
        checkpoint_dir: str | os.PathLike | None = None,
        on_interrupt: str = "restore",
    ) -> None:
        self.n_clusters = n_clusters
        self.max_clusters = max_clusters
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
        self.n_steps_no_change = n_steps_no_change
        self.cluster_sizes = cluster_sizes
        self.init = init
        self.augment_strength = augment_strength
        self.input_kind = input_kind
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
        self.mixed_precision = mixed_precision
        self.n_init = n_init
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.checkpoint_dir = checkpoint_dir
        self.on_interrupt = on_interrupt

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
        with self._unchanged_on_failure():
            # The values are checked by the one pass that profiles the rows.
            X = self._check_rows(X, reset=True, ensure_min_samples=2, check_values=False)
            profile = row_profile(self, X)
            count = estimated_cluster_count(self, X, profile)
            n_clusters = self.n_clusters if count is None else count.n_clusters
            settings = resolve_settings(self, X, profile=profile, n_clusters=n_clusters)
            result = fit_initializations(settings, X)
            self._set_fitted(result.model)
            self.init_scores_ = result.init_scores
            self.n_clusters_curve_ = None if count is None else count.as_dict()
        if result.interruption is not None:
            _warn_interrupted(result.interruption)
        n_empty = self.n_clusters_ - len(np.unique(self.labels_))
        if n_empty:
            warnings.warn(
                f"{n_empty} of the n_clusters={self.n_clusters_} clusters hold no training "
                "row: the data do not support that many clusters (there are "
                f"{len(self.labels_) / self.n_clusters_:.1f} rows per cluster).",
                ConvergenceWarning,
                stacklevel=_stack_level_outside(("sklearn_selflabel.", "sklearn.")),
            )
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None) -> SelfLabelingClusterer:
        """Train one epoch on the chunk ``X``, continuing from the previous calls (or ``fit``).

        The first call builds the network, with the input standardisation estimated on that
        chunk. In online mode each batch of the chunk gets its labels from Sinkhorn over the
        batch plus the queue, which carries over from call to call: the natural mode for
        streams and out-of-core data. In offline mode a label step over the whole chunk
        (Sinkhorn on its clean logits, warm-started from the previous chunk) gives the chunk's
        labels, and the epoch trains against them; memory then grows with the chunk size.
        A call that fails or is interrupted leaves the estimator as it was before it.

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
        with self._unchanged_on_failure():
            previous = getattr(self, "net_", None)
            # The values are checked by resolve_settings, as it profiles the rows.
            X = self._check_rows(
                X, reset=previous is None, ensure_min_samples=2, check_values=False
            )
            trained_on = None if previous is None else self.device_
            # A model fitted with n_clusters="auto" continues with the number it estimated.
            estimated = previous is not None and self.n_clusters == "auto"
            settings = resolve_settings(
                self,
                X,
                n_clusters=self.n_clusters_ if estimated else None,
                chunk=True,
                trained_on=trained_on,
            )
            model, _ = train_chunk(settings, X, previous)
            self._set_fitted(model)
        return self

    @contextmanager
    def _unchanged_on_failure(self) -> Iterator[None]:
        """A failure (or an interruption that keeps nothing) leaves the estimator as it was."""
        state_before = self.__dict__.copy()
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state_before)
            raise

    def _set_fitted(self, model: FittedModel) -> None:
        vars(self).update(model.attributes())

    def _check_rows(
        self, X, *, reset: bool, ensure_min_samples: int = 1, check_values: bool = True
    ):
        return check_rows(
            self,
            X,
            reset=reset,
            ensure_min_samples=ensure_min_samples,
            check_values=check_values,
        )

    # ------------------------------------------------------------ inference

    def _infer(self, X, method: str, n_columns: int | None):
        check_is_fitted(self)
        if is_dask_array(X):
            dtype = METHODS[method][2]
            return map_row_blocks(self, method, X, dtype=dtype, n_columns=n_columns)
        rows = self._check_rows(X, reset=False)
        return method_outputs(method, self.net_, rows, self.best_head_, self.logit_offsets_)

    def predict(self, X) -> np.ndarray:
        """Cluster of each row of ``X``, from the head ``best_head_``.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)
            Read one batch at a time. A ``dask.array.Array`` gives a dask array, computed
            block by block (on a Dask cluster, if one is in use) when asked for; so do
            ``predict_proba`` and ``transform``.

        Returns
        -------
        labels : ndarray or dask array of shape (n_samples,), dtype int64
            Values in ``0 .. n_clusters - 1``: the argmax of the logits plus
            ``logit_offsets_``.
        """
        return self._infer(X, "predict", None)

    def predict_proba(self, X) -> np.ndarray:
        """Cluster probabilities ``p(y | x)`` of each row of ``X``, from the head ``best_head_``.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray or dask array of shape (n_samples, n_clusters), dtype float64
            Rows sum to one: the softmax of the logits plus ``logit_offsets_``, i.e. the
            network's probabilities reweighted by the cluster prior that balances the
            training rows.
        """
        check_is_fitted(self)
        return self._infer(X, "predict_proba", self.n_clusters_)

    def transform(self, X) -> np.ndarray:
        """The learned embedding ``Φ(X)``.

        Parameters
        ----------
        X : {array-like, sparse matrix, dask array} of shape (n_samples, n_features)

        Returns
        -------
        embedding : ndarray or dask array of shape (n_samples, embedding_dim_), dtype float32
        """
        check_is_fitted(self)  # before embedding_dim_ is read
        return self._infer(X, "transform", self.embedding_dim_)

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
        check_is_fitted(self)
        rows = self._check_rows(X, reset=False)
        return information_score(self.net_, rows, self.best_head_, self.logit_offsets_)

    def save(self, path: str | os.PathLike) -> None:
        """Write the fitted model to ``path``, in a file that loading cannot run code from.

        The file holds the parameters, the fitted attributes and the network's weights and
        training state as JSON and arrays (the format is described in the user guide); read
        it with :func:`sklearn_selflabel.load`. A custom ``module`` class is recorded by its
        import path, so it must be importable where the file is loaded, and the loader must
        trust it. An ``accelerator`` is not saved, nor a ``RandomState`` instance as
        ``random_state`` (both load as None). The file is written atomically.

        Parameters
        ----------
        path : str or path-like
            Where to write; an existing file is replaced.
        """
        check_is_fitted(self)
        save_model(self, path)

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        if "net_" in state:
            # A network pickled on CUDA unpickles onto the CPU where CUDA is absent (skorch
            # warns); the estimator follows it.
            self.device_ = str(self.net_.device)

    @property
    def n_clusters_(self) -> int:
        """Number of clusters of the fitted model (one logit offset each)."""
        return len(self.logit_offsets_)

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


def _warn_interrupted(interruption: Interruption) -> None:
    """Warn that ``fit`` kept the state of its last completed epoch, at the caller's line."""
    done, total = interruption.n_completed, interruption.n_epochs
    warnings.warn(
        f"fit was interrupted in epoch {done + 1} of {total}; the estimator is fitted from "
        f"the state after epoch {done}, the last completed one (on_interrupt='keep').",
        UserWarning,
        stacklevel=_stack_level_outside(("sklearn_selflabel.", "sklearn.")),
    )


def _stack_level_outside(modules: tuple[str, ...]) -> int:
    """The ``stacklevel``, for a ``warnings.warn`` in the caller of this function, of the first
    frame up the stack that is not in one of ``modules`` (``fit`` and its wrappers)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").startswith(modules):
        frame, level = frame.f_back, level + 1
    return level
