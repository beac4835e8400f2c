"""``SelfLabelingClusterer``: the scikit-learn face of self-labelling deep clustering."""

from __future__ import annotations

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
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.sparsefuncs import mean_variance_axis
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from ._callbacks import FiniteLossGuard, LabelStep, label_step_epochs
from ._data import IndexedRows, shuffled_batch_loader
from ._net import SelfLabelNet
from .modules import MLPEncoder, MultiHeadClassifier, SelfLabelNetwork, TabularAugment

_INPUT_DTYPES = [np.float32, np.float64]


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
    noise and feature masking); the label step, ``predict`` and ``transform`` see clean rows.

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
    max_epochs : int, default=120
        Number of training epochs (passes over the data).
    batch_size : int, default=256
        Mini-batch size for training and the batch size of inference.
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
    augment_strength : float, default=0.5
        Strength of the training views: Gaussian noise of this many standard deviations per
        feature, and each feature masked to its mean with probability ``augment_strength / 2``.
    device : str, default="auto"
        Torch device; ``"auto"`` picks CUDA when available, else the CPU.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, the initial labels, shuffling and augmentation. With an
        integer, two fits on the CPU give identical results. The global numpy, torch and
        ``random`` states are left untouched.
    verbose : int, default=0
        ``0`` prints nothing; ``1`` prints skorch's per-epoch table.

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
        Those losses, per head.
    embedding_dim_ : int
        Size of the embedding returned by ``transform``.
    device_ : str
        Device the network was trained on.
    n_iter_ : int
        Number of epochs run.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
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
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "sinkhorn_lambda": [Interval(Real, 0, None, closed="neither")],
        "sinkhorn_tol": [Interval(Real, 0, None, closed="neither")],
        "sinkhorn_max_iter": [Interval(Integral, 1, None, closed="left")],
        "n_label_steps": [Interval(Integral, 1, None, closed="left")],
        "augment_strength": [Interval(Real, 0, None, closed="left")],
        "device": [StrOptions({"auto"}), str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
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
        max_epochs: int = 120,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        sinkhorn_lambda: float = 25.0,
        sinkhorn_tol: float = 1e-3,
        sinkhorn_max_iter: int = 100,
        n_label_steps: int = 60,
        augment_strength: float = 0.5,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: int = 0,
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
        self.augment_strength = augment_strength
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # ------------------------------------------------------------------ fit

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> SelfLabelingClusterer:
        """Learn the network and the clustering of ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data. Sparse matrices are densified one batch at a time.
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
        X = validate_data(self, X, accept_sparse="csr", dtype=_INPUT_DTYPES, ensure_min_samples=2)
        n_samples = X.shape[0]
        if self.n_clusters > n_samples:
            raise ValueError(f"n_samples={n_samples} should be >= n_clusters={self.n_clusters}.")
        hidden_layer_sizes = self._checked_hidden_layer_sizes()
        device = _resolve_device(self.device)
        seed = _seed_from(self.random_state)
        with _isolated_torch_rng(seed, device):
            network, embedding_dim = self._build_network(X, hidden_layer_sizes)
            net = self._build_net(network, device, seed)
            net.fit(IndexedRows(X), y=None)
            if len(net.history) < self.max_epochs:
                # skorch swallows Ctrl-C and returns; a model cut off mid-training must not
                # pose as a fitted one.
                raise KeyboardInterrupt(
                    f"fit was interrupted after {len(net.history)} of {self.max_epochs} epochs; "
                    "the estimator is left as it was before fit."
                )
            logits = net.evaluate_rows(X, self.batch_size)
        head_losses = net.head_losses(logits)
        best_head = int(np.argmin(head_losses))

        self.net_ = net
        self.best_head_ = best_head
        self.head_losses_ = head_losses
        self.embedding_dim_ = embedding_dim
        self.device_ = str(device)
        self.n_iter_ = len(net.history)
        self.labels_ = logits[best_head].argmax(dim=1).cpu().numpy().astype(np.int64)
        return self

    def _checked_hidden_layer_sizes(self) -> tuple[int, ...]:
        sizes = np.asarray(self.hidden_layer_sizes).reshape(-1)
        if not all(isinstance(s, Integral) and s >= 1 for s in sizes.tolist()):
            raise ValueError(
                "hidden_layer_sizes must be a sequence of positive integers, got "
                f"{self.hidden_layer_sizes!r}."
            )
        return tuple(int(s) for s in sizes)

    def _build_network(self, X, hidden_layer_sizes) -> tuple[SelfLabelNetwork, int]:
        n_features = X.shape[1]
        if self.module is None:
            encoder = MLPEncoder(n_features, hidden_layer_sizes, self.embedding_dim)
        else:
            encoder = self.module(n_features=n_features, **(self.module_params or {}))
            if not isinstance(encoder, nn.Module):
                raise TypeError(
                    f"module must build a torch.nn.Module, got {type(encoder).__name__}."
                )
        embedding_dim = _output_size(encoder, n_features)
        mean, scale = _feature_mean_and_scale(X)
        network = SelfLabelNetwork(
            encoder,
            MultiHeadClassifier(embedding_dim, self.n_clusters, self.n_heads),
            torch.from_numpy(mean),
            torch.from_numpy(scale),
            TabularAugment(self.augment_strength),
        )
        return network, embedding_dim

    def _build_net(self, network: SelfLabelNetwork, device: torch.device, seed: int):
        label_step = LabelStep(
            frozenset(label_step_epochs(self.max_epochs, self.n_label_steps).tolist()),
            n_clusters=self.n_clusters,
            n_heads=self.n_heads,
            lamb=self.sinkhorn_lambda,
            tol=self.sinkhorn_tol,
            max_iter=self.sinkhorn_max_iter,
            batch_size=self.batch_size,
            seed=seed,
        )
        return SelfLabelNet(
            module=network,
            criterion=nn.CrossEntropyLoss,
            optimizer=torch.optim.Adam,
            lr=self.lr,
            optimizer__weight_decay=self.weight_decay,
            max_epochs=self.max_epochs,
            batch_size=self.batch_size,
            train_split=None,
            iterator_train=shuffled_batch_loader,
            iterator_train__rng=np.random.default_rng(seed),
            callbacks=[("label_step", label_step), ("finite_loss", FiniteLossGuard())],
            device=str(device),
            verbose=self.verbose,
        )

    # ------------------------------------------------------------ inference

    def _validated(self, X):
        check_is_fitted(self)
        return validate_data(self, X, accept_sparse="csr", dtype=_INPUT_DTYPES, reset=False)

    def _head_logits(self, X) -> torch.Tensor:
        X = self._validated(X)
        return self.net_.evaluate_rows(X, self.batch_size, head=self.best_head_)

    def predict(self, X) -> np.ndarray:
        """Cluster of each row of ``X``, from the head ``best_head_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int64, values in ``0 .. n_clusters - 1``
        """
        return self._head_logits(X).argmax(dim=1).cpu().numpy().astype(np.int64)

    def predict_proba(self, X) -> np.ndarray:
        """Cluster probabilities ``p(y | x)`` of each row of ``X``, from the head ``best_head_``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_clusters), dtype float64
            Rows sum to one.
        """
        logits = self._head_logits(X).double()
        return torch.softmax(logits, dim=1).cpu().numpy()

    def transform(self, X) -> np.ndarray:
        """The learned embedding ``Φ(X)``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)

        Returns
        -------
        embedding : ndarray of shape (n_samples, embedding_dim_), dtype float32
        """
        X = self._validated(X)
        return self.net_.evaluate_rows(X, self.batch_size, output="embedding").cpu().numpy()

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
        proba = self.predict_proba(X)
        if self.n_clusters == 1:
            return 0.0  # one cluster carries no information about the samples
        return float(_information(proba) / np.log(self.n_clusters))

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


def _information(proba: np.ndarray) -> float:
    """Mutual information between the row index and the label under ``proba``."""
    marginal = proba.mean(axis=0)
    entropy_of_mean = -np.sum(marginal * np.log(np.clip(marginal, 1e-300, None)))
    mean_entropy = -np.mean(np.sum(proba * np.log(np.clip(proba, 1e-300, None)), axis=1))
    return max(entropy_of_mean - mean_entropy, 0.0)


def _feature_mean_and_scale(X) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation (1 where constant), float32, sparse-aware."""
    if sp.issparse(X):
        mean, var = mean_variance_axis(X, axis=0)
    else:
        mean, var = X.mean(axis=0, dtype=np.float64), X.var(axis=0, dtype=np.float64)
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
