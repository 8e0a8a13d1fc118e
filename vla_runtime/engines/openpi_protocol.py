"""openpi's policy-server wire format, without pickle: msgpack with numpy arrays as plain maps.

What ``openpi-client`` (PyPI 0.1.2, ``openpi_client.msgpack_numpy``) sends and expects, written here
from the protocol, not copied:

* a websocket connection; the server's first message is a metadata map;
* then each request is one binary message, a msgpack map (the observation: strings, numbers, nested
  maps and arrays), and each reply one binary message, a msgpack map (``{"actions": [H, A], ...}``);
  a server that cannot answer sends a text message with the error instead;
* a numpy array travels as the map ``{"__ndarray__": true, "data": <raw bytes>, "dtype": <numpy
  dtype string, e.g. "<f4">, "shape": [..]}`` (a numpy scalar as ``{"__npgeneric__": true, "data",
  "dtype"}``); the client writes those keys as msgpack *bytes* and only recognises them so, so they
  are written as bytes here and read in both spellings;
* authentication: ``WebsocketClientPolicy(api_key=K)`` sends the HTTP header
  ``Authorization: Api-Key K`` with the websocket handshake;
* ``GET /healthz`` answers ``200 OK`` (openpi's server does too).

Decoding is strict: only numeric and boolean arrays (never object, void, structured or complex), a
declared shape that matches the bytes, bounded sizes and nesting, string keys; anything else is a
:class:`ProtocolError` naming what was wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

#: The header ``openpi-client`` sends with ``api_key``: ``Authorization: Api-Key <key>``.
AUTH_HEADER = "Authorization"
AUTH_SCHEME = "Api-Key"
_ALLOWED_KINDS = "biuf"
_ND = ("__ndarray__", b"__ndarray__")
_NG = ("__npgeneric__", b"__npgeneric__")


class ProtocolError(ValueError):
    """A message that is not a valid openpi-protocol map (the message says what)."""


def _enc(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise ProtocolError(f"cannot send an array of dtype {obj.dtype}")
        # Keys as msgpack bin, as openpi-client writes and (strictly) reads them.
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind not in _ALLOWED_KINDS:
            raise ProtocolError(f"cannot send a scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def pack(obj: Mapping[str, Any]) -> bytes:
    """One message: a map of strings, numbers, lists, maps and numpy arrays."""
    import msgpack

    return msgpack.packb(obj, default=_enc, use_bin_type=True)


def _get(d: Mapping, key: str) -> Any:
    return d[key] if key in d else d.get(key.encode())


def _dec_array(d: dict) -> np.ndarray:
    dtype_s, data, shape = _get(d, "dtype"), _get(d, "data"), _get(d, "shape")
    if isinstance(dtype_s, bytes):
        dtype_s = dtype_s.decode("ascii", "replace")
    if not isinstance(dtype_s, str) or not isinstance(data, bytes) or not isinstance(shape, (list, tuple)) \
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape) or len(shape) > 8:
        raise ProtocolError("an __ndarray__ map needs dtype (str), data (bytes) and shape (up to 8 ints >= 0)")
    try:
        dt = np.dtype(dtype_s)
    except TypeError as e:
        raise ProtocolError(f"array dtype {dtype_s!r} is not a numpy dtype") from e
    if dt.kind not in _ALLOWED_KINDS or dt.fields is not None or dt.hasobject:
        raise ProtocolError(f"array dtype {dtype_s!r} is refused (numeric or bool only)")
    n = int(np.prod(shape)) if shape else 1
    if n * dt.itemsize != len(data):
        raise ProtocolError(f"array of shape {list(shape)} {dt.name} needs {n * dt.itemsize} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(shape)


def _hook(d: dict) -> Any:
    if any(k in d for k in _ND):
        return _dec_array(d)
    if any(k in d for k in _NG):
        dtype_s, data = _get(d, "dtype"), _get(d, "data")
        if isinstance(dtype_s, bytes):
            dtype_s = dtype_s.decode("ascii", "replace")
        try:
            dt = np.dtype(dtype_s)
        except TypeError as e:
            raise ProtocolError(f"scalar dtype {dtype_s!r} is not a numpy dtype") from e
        if dt.kind not in _ALLOWED_KINDS or not isinstance(data, (int, float, bool)):
            raise ProtocolError(f"scalar of dtype {dtype_s!r} is refused (numeric or bool only)")
        return np.asarray(data, dtype=dt)
    for k in d:
        if not isinstance(k, str):
            raise ProtocolError(f"map keys must be strings, got {k!r}")
    return d


def unpack(message: bytes, max_bytes: int) -> dict[str, Any]:
    """One received message → a map (arrays are read-only numpy views of the message).

    Raises:
        ProtocolError: Not msgpack, not a map, a refused array, or over ``max_bytes``.
    """
    import msgpack

    if not isinstance(message, (bytes, bytearray)):
        raise ProtocolError(f"expected a binary msgpack message, got {type(message).__name__}")
    if len(message) > max_bytes:
        raise ProtocolError(f"message of {len(message)} bytes exceeds the limit of {max_bytes}")
    try:
        obj = msgpack.unpackb(bytes(message), object_hook=_hook, raw=False, strict_map_key=False,
                              max_bin_len=max_bytes, max_str_len=1 << 16, max_array_len=1024, max_map_len=256,
                              max_ext_len=0)
    except ProtocolError:
        raise
    except Exception as e:  # msgpack raises several types for bad input
        raise ProtocolError(f"not a msgpack message ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise ProtocolError(f"expected a map at the top level, got {type(obj).__name__}")
    return obj


def auth_value(token: str) -> str:
    """The ``Authorization`` header value openpi-client sends for ``api_key=token``."""
    return f"{AUTH_SCHEME} {token}"
