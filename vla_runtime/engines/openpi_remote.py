"""``backend: openpi_remote``: the fast part is a whole policy behind an openpi-protocol server.

The server (``vla-runtime serve``, openpi's ``scripts/serve_policy.py``, or any server speaking the
protocol of :mod:`vla_runtime.engines.openpi_protocol`) takes an observation map and answers
``{"actions": [H, A]}`` in robot units. Our runtime keeps everything around it: the chunk scheduler,
the safety filter, the arbiter and the failure detector, exactly as with a local engine.

The engine connects when it is built (like ONNX Runtime loading a graph) and reads the server's
metadata; a ``vla-runtime serve`` server describes its cameras, state and action shape, which
:func:`vla_runtime.engines.model_package.load_model_package` checks against the package that
describes the policy here. A call that fails (the server refused the observation, the connection
dropped, no reply within ``timeout_s``) raises :class:`EngineError`, as any engine failure does; the
next call reconnects.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vla_runtime.engines.base import Engine, EngineError, Feeds, Outputs, TensorInfo
from vla_runtime.engines.openpi_protocol import AUTH_HEADER, ProtocolError, auth_value, pack, unpack


def read_api_key(path: str | Path | None) -> str | None:
    """The token in ``path`` (stripped), or None.

    Raises:
        EngineError: The file is missing or empty.
    """
    if path is None:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise EngineError(f"api_key_file {p}: no such file")
    key = p.read_text(encoding="utf-8").strip()
    if not key:
        raise EngineError(f"api_key_file {p} is empty")
    return key


class OpenpiRemoteEngine(Engine):
    """A remote policy over openpi's websocket protocol, behind the :class:`Engine` interface.

    Feeds are the observation map (camera name → uint8 H×W×3 frame, ``state``, optionally ``prompt``
    as a string array, ``noise``, ...); the output is ``actions`` (float32, robot units).

    Args:
        url: ``ws://host:port`` or ``wss://...``.
        api_key: Token sent as ``Authorization: Api-Key <token>`` (None: none).
        timeout_s: Connect and reply timeout.
        max_message_bytes: Largest reply accepted.
        latency_window: Latency ring-buffer size.

    Raises:
        EngineError: The server cannot be reached, refuses the handshake (e.g. HTTP 401 without the
            token) or sends no valid metadata.
    """

    #: The engine runs the whole policy: observations in, actions in robot units out.
    whole_policy = True

    def __init__(self, url: str, *, api_key: str | None = None, timeout_s: float = 5.0,
                 max_message_bytes: int = 64 << 20, latency_window: int = 1000) -> None:
        super().__init__(latency_window)
        if not url.startswith(("ws://", "wss://")):
            raise EngineError(f"openpi_remote url must be ws://host:port or wss://..., got {url!r}")
        self.url = url
        self._key = api_key
        self.timeout_s = float(timeout_s)
        self.max_message_bytes = int(max_message_bytes)
        self._ws: Any = None
        self._cm: Any = None
        self.metadata: dict[str, Any] = {}
        self._connect()
        md = self.metadata
        inputs: list[TensorInfo] = []
        if isinstance(md.get("cameras"), Mapping):
            for cam, shape in md["cameras"].items():
                inputs.append(TensorInfo(str(cam), tuple(shape) if shape else (None, None, 3), np.dtype(np.uint8)))
        if isinstance(md.get("state_names"), list):
            inputs.append(TensorInfo("state", (len(md["state_names"]),), np.dtype(np.float32)))
        shape = md.get("action_shape")
        out_shape = tuple(int(d) for d in shape) if isinstance(shape, list) and len(shape) == 2 else (None, None)
        self._set_io(inputs, [TensorInfo("actions", out_shape, np.dtype(np.float32))])

    # ---------------------------------------------------------------- connection
    def _connect(self) -> None:
        from websockets.exceptions import InvalidStatus, WebSocketException
        from websockets.sync.client import connect

        headers = {AUTH_HEADER: auth_value(self._key)} if self._key else None
        try:
            # Entered as a context manager (websockets >= 17 asks for it; older versions return the connection,
            # whose __enter__ is itself); left in _drop.
            self._cm = connect(self.url, additional_headers=headers, compression=None, open_timeout=self.timeout_s,
                               max_size=self.max_message_bytes, close_timeout=1.0)
            self._ws = self._cm.__enter__()
        except InvalidStatus as e:
            code = e.response.status_code
            why = " (missing or wrong api key)" if code == 401 else ""
            raise EngineError(f"openpi server {self.url} refused the connection: HTTP {code}{why}") from e
        except (OSError, TimeoutError, WebSocketException) as e:
            raise EngineError(f"cannot reach the openpi server {self.url}: {type(e).__name__}: {e}") from e
        try:
            first = self._ws.recv(timeout=self.timeout_s)
            md = unpack(first, self.max_message_bytes)
        except (ProtocolError, TimeoutError, WebSocketException) as e:
            self._drop()
            raise EngineError(f"openpi server {self.url} sent no valid metadata: {e}") from e
        self.metadata = md

    def _drop(self) -> None:
        if self._ws is not None:
            try:
                self._cm.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - closing a broken connection may fail in many ways; it is gone anyway
                pass
            self._ws = self._cm = None

    # ---------------------------------------------------------------- Engine
    @property
    def provider(self) -> str:
        return f"openpi_remote:{self.url}"

    def validate(self, feeds: Feeds) -> None:
        """Declared inputs (from a ``vla-runtime serve`` server's metadata) must be there, right-shaped.

        ``prompt`` may be a string or a 0-d string array; other keys go to the server, which refuses
        what it does not know.
        """
        for t in self.input_specs:
            a = feeds.get(t.name)
            if a is None:
                takes = [s.describe() for s in self.input_specs]
                raise EngineError(f"missing feed {t.name!r}; the server takes {takes}")
            if not isinstance(a, np.ndarray) or a.dtype != t.dtype or a.ndim != len(t.shape) or \
                    any(d is not None and d != g for d, g in zip(t.shape, a.shape)):
                got = f"{list(a.shape)} {a.dtype}" if isinstance(a, np.ndarray) else type(a).__name__
                raise EngineError(f"feed {t.name!r} is {got}, the server takes {t.describe()}")

    def _run(self, feeds: Feeds) -> Outputs:
        from websockets.exceptions import WebSocketException

        obs: dict[str, Any] = {}
        for k, v in feeds.items():
            obs[k] = str(v) if isinstance(v, np.ndarray) and v.dtype.kind == "U" else v
        try:
            if self._ws is None:
                self._connect()
            self._ws.send(pack(obs))
            reply = self._ws.recv(timeout=self.timeout_s)
        except TimeoutError as e:
            self._drop()  # a late reply would answer the next request: start over
            raise EngineError(f"openpi server {self.url} did not answer within {self.timeout_s} s") from e
        except (OSError, WebSocketException) as e:
            self._drop()
            raise EngineError(f"openpi server {self.url}: connection lost: {type(e).__name__}: {e}") from e
        except ProtocolError as e:
            raise EngineError(f"cannot send this observation: {e}") from e
        if isinstance(reply, str):
            raise EngineError(f"openpi server {self.url} refused the observation: {reply}")
        try:
            msg = unpack(reply, self.max_message_bytes)
        except ProtocolError as e:
            raise EngineError(f"openpi server {self.url} sent a bad reply: {e}") from e
        actions = msg.get("actions")
        if not isinstance(actions, np.ndarray) or actions.ndim != 2 or actions.dtype.kind != "f":
            raise EngineError(f"openpi server {self.url}: the reply has no float 'actions' [H, A] array (keys "
                              f"{sorted(msg)})")
        return {"actions": np.array(actions, dtype=np.float32)}

    def close(self) -> None:
        self._drop()
