"""A file format that holds data and never code: JSON and ``.npy`` arrays in a zip archive.

Model files and checkpoints are written with ``write_archive`` and read with ``read_archive``.
A tree of dicts, lists, tuples, strings, numbers, booleans, None, numpy arrays and torch
tensors goes into ``content.json``, with every array stored as its own ``.npy`` member and
named in the JSON by a marker. Reading parses JSON and reads arrays with
``allow_pickle=False``: nothing in a file can make the reader import or run anything, so a
file from anyone is safe to read (what it is then used for is checked by the caller). An
object of any other type is refused when the file is written, so nothing is silently lost.

``format.json`` says what the file is: ``{"format": "sklearn-selflabel", "kind": ...,
"version": ...}``; a file of another kind, of an unknown newer version, or damaged, is refused
with an error that says so.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ._files import plain_mode, write_atomically

# The format name in every archive's header: a zip without it is refused.
FORMAT = "sklearn-selflabel"
# Markers: single-key dicts whose key starts with "__"; plain dicts may not use such keys.
_ARRAY, _TENSOR, _TUPLE, _ITEMS, _FLOAT = (
    "__array__",
    "__tensor__",
    "__tuple__",
    "__items__",
    "__float__",
)
# Tensor dtypes by the name that an archive records.
_TORCH_DTYPES = {
    str(dtype): dtype
    for dtype in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    )
}
# What a pickle starts with (protocol 2 and later), and what joblib's compressed files start
# with (zlib, gzip, bz2, xz, lzma): files that loading would have to unpickle.
_PICKLE_MAGIC = (b"\x80",)
_COMPRESSED_MAGIC = (b"\x78", b"\x1f\x8b", b"BZh", b"\xfd7zXZ", b"\x5d\x00\x00")


class ArchiveError(ValueError):
    """A file that is not a readable sklearn-selflabel archive of the expected kind."""


def write_archive(file: BinaryIO, kind: str, version: int, content: Any) -> None:
    """Write ``content`` into ``file`` as an archive of ``kind`` (e.g. "model"), ``version``.

    Raises
    ------
    TypeError
        If ``content`` holds an object that the format cannot store; the message names where.
    """
    arrays: dict[str, np.ndarray] = {}
    tree = _encode(content, arrays, "content")
    header = {"format": FORMAT, "kind": kind, "version": version}
    with zipfile.ZipFile(file, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("format.json", json.dumps(header))
        archive.writestr("content.json", json.dumps(tree, allow_nan=False))
        for name, array in arrays.items():
            with archive.open(name, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)


def read_archive(
    source: str | os.PathLike | bytes,
    kind: str,
    max_version: int,
    device: str | torch.device,
    *,
    name: str | None = None,
) -> tuple[int, Any]:
    """The version and content of an archive of ``kind``, tensors on ``device``.

    ``name`` is what messages call the file (default: its path).

    Raises
    ------
    ArchiveError
        If ``source`` is not such an archive, is of a newer version than ``max_version``, or
        is damaged; the message says which.
    """
    name = name or ("the data" if isinstance(source, bytes) else str(source))
    try:
        stream = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as exc:
        raise ArchiveError(f"{name}: cannot be read: {exc.strerror or exc}") from None
    with stream:
        start = stream.read(8)
        stream.seek(0)
        if not zipfile.is_zipfile(stream):
            if start.startswith(b"PK\x03\x04"):
                raise ArchiveError(f"{name}: is damaged or truncated (a zip archive cut short)")
            raise ArchiveError(f"{name}: {_what_it_is(start)}, not a sklearn-selflabel {kind} file")
        try:
            with zipfile.ZipFile(stream) as archive:
                header = _header(archive, name, kind)
                if header["version"] > max_version:
                    raise ArchiveError(
                        f"{name}: is a sklearn-selflabel {kind} file of format version "
                        f"{header['version']}, newer than this version reads (up to "
                        f"{max_version}); upgrade sklearn-selflabel to read it"
                    )
                tree = json.loads(archive.read("content.json"))
                content = _decode(tree, archive, torch.device(device))
        except ArchiveError:
            raise
        except _PickledArray as exc:
            raise ArchiveError(f"{name}: is not a file of this library: {exc}") from None
        except (
            zipfile.BadZipFile,
            KeyError,
            ValueError,
            TypeError,
            IndexError,
            EOFError,
            OSError,
        ) as exc:
            raise ArchiveError(f"{name}: is damaged or truncated ({exc})") from None
    return header["version"], content


def looks_like_a_pickle(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a pickle or a compressed joblib file."""
    with open(path, "rb") as file:
        start = file.read(8)
    return start.startswith(_PICKLE_MAGIC + _COMPRESSED_MAGIC)


def _what_it_is(start: bytes) -> str:
    if start.startswith(_PICKLE_MAGIC + _COMPRESSED_MAGIC):
        return "is a pickle (or joblib) file, which can run code when loaded"
    return "is empty" if not start else "is not a zip archive"


def _header(archive: zipfile.ZipFile, name: str, kind: str) -> dict:
    try:
        header = json.loads(archive.read("format.json"))
    except KeyError:
        raise ArchiveError(
            f"{name}: is a zip archive but not a sklearn-selflabel {kind} file (no format.json)"
        ) from None
    if not (
        isinstance(header, dict)
        and header.get("format") == FORMAT
        and isinstance(header.get("version"), int)
    ):
        raise ArchiveError(f"{name}: is not a sklearn-selflabel {kind} file")
    if header.get("kind") != kind:
        raise ArchiveError(
            f"{name}: is a sklearn-selflabel {header.get('kind')} file, not a {kind} file"
        )
    return header


def _encode(value: Any, arrays: dict, where: str) -> Any:
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else {_FLOAT: repr(value)}
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, torch.Tensor):
        key = f"arrays/{len(arrays)}.npy"
        tensor = value.detach().cpu()
        # numpy has no bfloat16: such tensors travel as float32 and are cast back.
        arrays[key] = (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
        return {_TENSOR: key, "dtype": str(value.dtype)}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{where}: an array of Python objects cannot be stored")
        key = f"arrays/{len(arrays)}.npy"
        arrays[key] = value
        return {_ARRAY: key}
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            _ITEMS: [
                [_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")]
                for k, v in value.items()
            ]
        }
    raise TypeError(f"{where}: a {type(value).__name__} cannot be stored")


def _decode(tree: Any, archive: zipfile.ZipFile, device: torch.device) -> Any:
    if isinstance(tree, list):
        return [_decode(v, archive, device) for v in tree]
    if not isinstance(tree, dict):
        return tree
    if len(tree) >= 1 and next(iter(tree)).startswith("__"):
        marker = next(iter(tree))
        if marker == _TUPLE:
            return tuple(_decode(v, archive, device) for v in tree[_TUPLE])
        if marker == _ITEMS:
            return {
                _decode(k, archive, device): _decode(v, archive, device) for k, v in tree[_ITEMS]
            }
        if marker == _FLOAT:
            return float(tree[_FLOAT])
        if marker in (_ARRAY, _TENSOR):
            with archive.open(tree[marker]) as member:
                array = _read_npy(member)
            if marker == _ARRAY:
                return array
            dtype = _TORCH_DTYPES[tree["dtype"]]
            return torch.from_numpy(np.ascontiguousarray(array)).to(device=device, dtype=dtype)
        raise ValueError(f"unknown marker {marker!r}")
    return {k: _decode(v, archive, device) for k, v in tree.items()}


class _PickledArray(ValueError):
    pass


def _read_npy(member) -> np.ndarray:
    """An array member, refused before its data are read if it holds Python objects."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        _, _, dtype = np.lib.format.read_array_header_1_0(member)
    else:
        _, _, dtype = np.lib.format.read_array_header_2_0(member)
    if dtype.hasobject:
        raise _PickledArray("it holds an array of Python objects, which only a pickle can read")
    member.seek(0)
    return np.lib.format.read_array(member, allow_pickle=False)


def write_archive_file(path: str | os.PathLike, kind: str, version: int, content: Any) -> None:
    """``write_archive`` into ``path``, atomically (a failure leaves the previous file), with
    the permissions of a plain ``open()``."""
    write_atomically(
        Path(path), lambda file: write_archive(file, kind, version, content), mode=plain_mode()
    )
