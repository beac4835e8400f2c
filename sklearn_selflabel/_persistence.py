"""Model files: ``SelfLabelingClusterer.save`` and ``sklearn_selflabel.load``.

A model file is an archive of ``_archive`` (JSON and ``.npy`` arrays in a zip, kind
``"model"``): the estimator's parameters, its fitted attributes, the settings its network was
built from and the network's state (weights, optimizer, history, label step). Loading reads
data only, then builds the network again from the settings and loads the weights into it.
The one thing that would run code is a custom ``module`` class, which is recorded by its
import path and imported only when the caller names it in ``trusted``.

Format versions: 1 (this one). A file of a newer version is refused with a clear error.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterable

import numpy as np
import torch

from ._archive import ArchiveError, read_archive, write_archive_file
from ._build import build_net, module_for
from ._checkpoint import EpochEndState, restore_training_state, training_state
from ._offline import ChunkLabelStep, OfflineLabels
from ._online import OnlineLabels
from ._settings import NetworkSettings, PropagationSettings, Settings, resolve_device
from ._training import isolated_torch_rng

# Bumped when a model file's layout changes: a file of a newer version is refused.
FORMAT_VERSION = 1
# Classes of this package load without being named in trusted.
_PACKAGE = __package__
# The archive kind of a model file.
_KIND = "model"
# Fitted attributes that every fitted model has,
_FITTED = ("labels_", "best_head_", "head_losses_", "logit_offsets_", "embedding_dim_")
_FITTED += ("device_", "n_iter_", "n_features_in_")
# and those that only some have.
_OPTIONAL_FITTED = ("init_scores_", "feature_names_in_", "n_clusters_curve_")
# The label mode's settings class, by the name that a file records.
_LABEL_MODES = {"offline": OfflineLabels, "online": OnlineLabels}


def save_model(estimator, path: str | os.PathLike) -> None:
    """Write the fitted ``estimator`` to ``path`` (see ``SelfLabelingClusterer.save``)."""
    net = estimator.net_
    label_step = dict(net.callbacks_)["label_step"]
    fitted = {name: getattr(estimator, name) for name in _FITTED}
    for name in _OPTIONAL_FITTED:
        if hasattr(estimator, name):
            value = getattr(estimator, name)
            fitted[name] = value.tolist() if name == "feature_names_in_" else value
    content = {
        "estimator": type(estimator).__name__,
        "library_version": _library_version(),
        "params": _params_to_dict(estimator.get_params(deep=False)),
        "fitted": fitted,
        "settings": _settings_to_dict(net.build_settings_),
        "label_step": {
            "kind": "chunk" if isinstance(label_step, ChunkLabelStep) else "fit",
            "seed": getattr(label_step, "seed", 0),
        },
        "state": training_state(net),
    }
    write_archive_file(path, _KIND, FORMAT_VERSION, content)


def load(
    path: str | os.PathLike,
    *,
    trusted: Iterable[type | str] = (),
    device: str | None = None,
):
    """Load a model saved by :meth:`SelfLabelingClusterer.save`, without running code from it.

    Parameters
    ----------
    path : str or path-like
        The model file.
    trusted : iterable of classes or str, default=()
        Custom ``module`` classes that the file may name, as classes or import paths
        (``"package.module:Class"``). A file that names a class not listed here is refused:
        importing a class runs its module's code. The package's own modules are trusted.
    device : str or None, default=None
        Where to put the network; None: where it was trained when that device is available
        here, else the CPU.

    Returns
    -------
    SelfLabelingClusterer
        The fitted model; it predicts and transforms exactly as the saved one did.

    Raises
    ------
    ValueError
        If the file is not a model file of sklearn-selflabel, is damaged or truncated, comes
        from a newer format version, or names a ``module`` class that is not trusted.

    Examples
    --------
    >>> import os, tempfile
    >>> from sklearn.datasets import make_blobs
    >>> from sklearn_selflabel import SelfLabelingClusterer, load
    >>> X, _ = make_blobs(90, centers=3, random_state=0)
    >>> model = SelfLabelingClusterer(n_clusters=3, max_epochs=5, random_state=0).fit(X)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.selflabel")
    >>> model.save(path)
    >>> bool((load(path).predict(X) == model.predict(X)).all())
    True
    """
    from .clusterer import SelfLabelingClusterer

    _, content = read_archive(path, _KIND, FORMAT_VERSION, "cpu")
    try:
        if content["estimator"] != SelfLabelingClusterer.__name__:
            raise ValueError(f"it holds a {content['estimator']}")
        classes = _trusted_paths(trusted)
        saved = content["settings"]
        target = torch.device(device) if device is not None else _available(saved["device"])
        settings = _settings_from_dict(saved, classes, target)
        params = _params_from_dict(content["params"], classes)
        estimator = SelfLabelingClusterer(**params)
        net = _rebuild_net(settings, content, target)
        fitted = dict(content["fitted"])
    except _Untrusted as exc:
        raise ValueError(f"{path}: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise ArchiveError(f"{path}: is not a valid model file ({exc})") from None
    if "feature_names_in_" in fitted:
        fitted["feature_names_in_"] = np.asarray(fitted["feature_names_in_"], dtype=object)
    vars(estimator).update(fitted, net_=net, device_=str(target))
    return estimator


class _Untrusted(ValueError):
    pass


def _rebuild_net(settings: Settings, content: dict, device: torch.device):
    state = content["state"]
    module_state = state["module"]
    n_features = int(module_state["mean"].shape[0])
    # The weights are loaded below; building the network draws random initial ones, from a
    # fork of torch's random state so that the caller's is untouched.
    with isolated_torch_rng(0, torch.device("cpu")):
        placeholder = np.zeros(n_features, dtype=np.float32)
        module = module_for(settings.network, n_features, placeholder, placeholder + 1)
        if content["label_step"]["kind"] == "chunk":
            label_step = settings.labels.chunk_label_step()
        else:
            label_step = settings.labels.fit_label_step(
                settings.max_epochs, content["label_step"]["seed"]
            )
        end_state = EpochEndState(keep_last=False, directory=None, fingerprint=None)
        net = build_net(settings, module, 0, label_step, end_state)
        net.initialize()
        restore_training_state(net, state, buffers=False)
    if getattr(net, "label_table_", None) is not None:
        net.label_table_ = net.label_table_.to(device)
    net.module_.eval()
    return net


def _available(saved: str) -> torch.device:
    device = torch.device(saved)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


def _class_path(cls) -> str:
    qualname = getattr(cls, "__qualname__", None)
    if qualname is None or "<locals>" in qualname:
        raise TypeError(
            f"module={cls!r} cannot be saved by name: define it at the top level of a module "
            "that the loading process can import"
        )
    return f"{cls.__module__}:{qualname}"


def _trusted_paths(trusted: Iterable[type | str]) -> set[str]:
    paths = set()
    for item in trusted:
        if isinstance(item, str):
            module, _, name = item.rpartition(":") if ":" in item else item.rpartition(".")
            paths.add(f"{module}:{name}")
        else:
            paths.add(_class_path(item))
    return paths


def _import_class(path: str, trusted: set[str]):
    module_name, _, qualname = path.partition(":")
    own = module_name == _PACKAGE or module_name.startswith(f"{_PACKAGE}.")
    if not own and path not in trusted:
        raise _Untrusted(
            f"the model's module is {path}, which is not trusted; importing it would run its "
            f"code. Load with trusted=[{path!r}] if you trust it."
        )
    target = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _params_to_dict(params: dict) -> dict:
    params = dict(params)
    if params["module"] is not None:
        params["module"] = {"class": _class_path(params["module"])}
    # Runtime objects: a saved model does not need them, and they cannot be stored.
    params["accelerator"] = None
    if not (params["random_state"] is None or isinstance(params["random_state"], int)):
        params["random_state"] = None
    if params["checkpoint_dir"] is not None:
        params["checkpoint_dir"] = os.fspath(params["checkpoint_dir"])
    return params


def _params_from_dict(params: dict, trusted: set[str]) -> dict:
    params = dict(params)
    if params["module"] is not None:
        params["module"] = _import_class(params["module"]["class"], trusted)
    return params


def _settings_to_dict(settings: Settings) -> dict:
    network = dataclasses.asdict(settings.network)
    # The module's buffers hold the input standardization; a loaded model is not rebuilt
    # from these settings.
    del network["input_mean"], network["input_scale"]
    if settings.network.module is not None:
        network["module"] = _class_path(settings.network.module)
    return {
        "network": network,
        "labels": {"name": settings.labels.name, **dataclasses.asdict(settings.labels)},
        "propagation": None
        if settings.propagation is None
        else dataclasses.asdict(settings.propagation),
        "device": str(settings.device),
        "mixed_precision": settings.mixed_precision,
        **{
            name: getattr(settings, name)
            for name in ("max_epochs", "batch_size", "lr", "weight_decay", "verbose", "seeds")
        },
        "checkpoint_dir": None
        if settings.checkpoint_dir is None
        else os.fspath(settings.checkpoint_dir),
        "warm_start": settings.warm_start,
        "on_interrupt": settings.on_interrupt,
    }


def _settings_from_dict(saved: dict, trusted: set[str], device: torch.device) -> Settings:
    network = dict(saved["network"])
    if network["module"] is not None:
        network["module"] = _import_class(network["module"], trusted)
    labels = dict(saved["labels"])
    mode = _LABEL_MODES[labels.pop("name")]
    return Settings(
        network=NetworkSettings(**network),
        labels=mode(**labels),
        propagation=None
        if saved["propagation"] is None
        else PropagationSettings(**saved["propagation"]),
        device=resolve_device(str(device)),
        mixed_precision=saved["mixed_precision"],
        accelerator=None,
        max_epochs=saved["max_epochs"],
        batch_size=saved["batch_size"],
        lr=saved["lr"],
        weight_decay=saved["weight_decay"],
        verbose=saved["verbose"],
        seeds=tuple(saved["seeds"]),
        checkpoint_dir=saved["checkpoint_dir"],
        warm_start=saved["warm_start"],
        on_interrupt=saved["on_interrupt"],
    )


def _library_version() -> str:
    from . import __version__

    return __version__
