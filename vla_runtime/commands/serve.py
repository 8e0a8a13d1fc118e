"""``vla-runtime serve PACKAGE``: a model package behind openpi's policy-server protocol.

An existing openpi robot client (``openpi_client.WebsocketClientPolicy``) can use our engines: it
connects over a websocket, receives a metadata map, then sends observation maps and gets
``{"actions": [H, A], "server_timing": {...}}`` back (:mod:`vla_runtime.engines.openpi_protocol`).

The observation is what ``vla-runtime infer`` takes (:mod:`vla_runtime.commands.infer`): one uint8
H×W×3 RGB frame per camera name, ``state`` float32 [S] (the package's ``proprio.names`` order, robot
units), ``prompt`` (a string), optional ``noise`` / ``step_noise`` / ``seed``. ``actions`` are in robot
units (de-normalised). The metadata map says all of that (cameras and their sizes, state and action
names, chunk horizon, control rate).

Safety: the server binds to loopback unless ``--allow-remote`` is given, and binding beyond loopback
also needs a token (``--token-file`` or ``$VLA_SERVE_TOKEN``): clients must send it as openpi-client's
``api_key`` does, the header ``Authorization: Api-Key <token>``; a handshake without it gets HTTP 401.
Every refusal is counted (``GET /stats``, JSON): a frame that is not msgpack or holds a refused array
(``refused_malformed``), an unknown key (``refused_unknown_key``), a value that does not fit the package
(``refused_bad_value``), a frame over ``--max-message-mb`` (``refused_oversize``: the connection is
closed with 1009), a missing or wrong token (``refused_auth``). A refused request gets a text message
with the reason (openpi-client raises it as ``RuntimeError``); the connection and the server go on.
Nothing is ever unpickled. ``GET /healthz`` answers ``OK``.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from vla_runtime.engines.openpi_protocol import AUTH_HEADER, ProtocolError, auth_value, pack, unpack

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: Environment variable holding the token when no ``--token-file`` is given.
TOKEN_ENV = "VLA_SERVE_TOKEN"


class ServeError(ValueError):
    """The server cannot start as asked (the message says why)."""


def read_token(token_file: str | None) -> str | None:
    """The auth token: the file's content (stripped), else ``$VLA_SERVE_TOKEN``, else None.

    Raises:
        ServeError: The file is missing or empty, or the token is shorter than 16 characters.
    """
    token = None
    if token_file:
        p = Path(token_file)
        if not p.is_file():
            raise ServeError(f"--token-file {token_file}: no such file")
        token = p.read_text(encoding="utf-8").strip()
        if not token:
            raise ServeError(f"--token-file {token_file} is empty")
    elif os.environ.get(TOKEN_ENV):
        token = os.environ[TOKEN_ENV].strip()
    if token is not None and len(token) < 16:
        raise ServeError(f"the auth token must be at least 16 characters, got {len(token)}")
    return token


class PolicyServer:
    """Serves one :class:`~vla_runtime.core.policy.PolicyRunner` over openpi's protocol.

    Args:
        runner: The package's runner (calls are serialised: one inference at a time).
        host: Address to bind (loopback unless ``allow_remote``).
        port: Port (0: any free one; :attr:`port` says which).
        token: Required ``Api-Key`` token, or None (loopback only).
        allow_remote: Permit a non-loopback ``host`` (needs ``token``).
        max_message_bytes: Largest request accepted.

    Raises:
        ServeError: A non-loopback host without ``allow_remote`` or without a token.
    """

    def __init__(self, runner: Any, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 allow_remote: bool = False, max_message_bytes: int = 64 << 20) -> None:
        if host not in _LOOPBACK:
            if not allow_remote:
                raise ServeError(f"refusing to bind {host!r}: the server binds to loopback only unless --allow-remote "
                                 "is given")
            if token is None:
                raise ServeError(f"binding {host!r} beyond loopback needs an auth token (--token-file or "
                                 f"${TOKEN_ENV}); clients send it as openpi-client's api_key")
        self.runner = runner
        self.host = host
        self.token = token
        self.max_message_bytes = int(max_message_bytes)
        self.stats = {"connections": 0, "requests": 0, "served": 0, "refused_malformed": 0,
                      "refused_unknown_key": 0, "refused_bad_value": 0, "refused_oversize": 0, "refused_auth": 0,
                      "errors": 0}
        self._stats_lock = threading.Lock()
        self._infer_lock = threading.Lock()
        self._server = self._make(port)
        self.port = int(self._server.socket.getsockname()[1])
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- plumbing
    def _make(self, port: int):
        from websockets.sync.server import serve

        return serve(self._handle, self.host, port, process_request=self._process_request, compression=None,
                     max_size=self.max_message_bytes, ping_interval=None)

    def _count(self, key: str) -> None:
        with self._stats_lock:
            self.stats[key] += 1

    def metadata(self) -> dict[str, Any]:
        """The map sent first on every connection: what to send and what comes back."""
        spec = self.runner.spec
        return {
            "server": "vla_runtime",
            "protocol": "openpi websocket + msgpack (numpy arrays as __ndarray__ maps)",
            "policy": spec.name,
            "source": spec.source.model_dump() if spec.source is not None else None,
            "cameras": {c.name: [c.height, c.width, 3] for c in spec.cameras} or
                       {c: None for c in self.runner.cameras},
            "state_names": list(spec.proprio.names),
            "prompt": spec.tokenizer is not None,
            "action_names": list(self.runner.package.action_space.dim_names),
            "action_shape": [spec.chunk_horizon, spec.action_dim],
            "actions_in": "robot units",
            "model_chunk": [spec.model_chunk_horizon, spec.model_action_dim],
            "control_rate_hz": spec.control_rate_hz,
            "auth_required": self.token is not None,
            "max_message_bytes": self.max_message_bytes,
        }

    def _authorized(self, request: Any) -> bool:
        if self.token is None:
            return True
        got = request.headers.get(AUTH_HEADER, "")
        return hmac.compare_digest(got.encode(), auth_value(self.token).encode())

    def _process_request(self, connection: Any, request: Any):
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            return connection.respond(HTTPStatus.OK, "OK\n")
        if not self._authorized(request):
            self._count("refused_auth")
            return connection.respond(HTTPStatus.UNAUTHORIZED,
                                      f"missing or wrong '{AUTH_HEADER}: Api-Key <token>' header\n")
        if path == "/stats":
            with self._stats_lock:
                body = json.dumps(self.stats)
            return connection.respond(HTTPStatus.OK, body + "\n")
        return None

    def _answer(self, message: bytes | str) -> bytes | str:
        """One request → the reply (bytes) or a refusal (text)."""
        from vla_runtime.commands.infer import InferInputError, run_infer
        from vla_runtime.engines.base import EngineError

        self._count("requests")
        try:
            if isinstance(message, str):
                raise ProtocolError("expected a binary msgpack message, got a text message")
            obs = unpack(message, self.max_message_bytes)
            t0 = time.perf_counter()
            with self._infer_lock:
                res = run_infer(self.runner, obs)
            infer_ms = (time.perf_counter() - t0) * 1e3
        except ProtocolError as e:
            self._count("refused_malformed")
            return f"refused: malformed request: {e}"
        except InferInputError as e:
            self._count("refused_unknown_key" if "unknown input key" in str(e) else "refused_bad_value")
            return f"refused: {e}"
        except (ValueError, KeyError) as e:
            self._count("refused_bad_value")
            return f"refused: {e.args[0] if isinstance(e, KeyError) and e.args else e}"
        except EngineError as e:
            self._count("errors")
            return f"error: the engine failed: {e}"
        self._count("served")
        return pack({"actions": res["actions"], "server_timing": {"infer_ms": infer_ms}})

    def _handle(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed

        self._count("connections")
        try:
            ws.send(pack(self.metadata()))
            while True:
                ws.send(self._answer(ws.recv()))
        except ConnectionClosed as e:
            if e.sent is not None and e.sent.code == 1009:  # the frame was over max_size: websockets closed it
                self._count("refused_oversize")

    # ---------------------------------------------------------------- running
    def start(self) -> PolicyServer:
        """Serve on a background thread (tests, embedding)."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="openpi_server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve on this thread until :meth:`shutdown` (or Ctrl-C)."""
        self._server.serve_forever()

    def shutdown(self) -> None:
        """Stop serving and close every connection."""
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(5.0)


def cmd_serve(package: str, host: str, port: int, allow_remote: bool, token_file: str | None, max_message_mb: float,
              seed: int, threads: int) -> int:
    """The command: load the package, serve until Ctrl-C. Errors are one line and exit code 1."""
    import sys

    from vla_runtime.core.policy import PolicyRunner
    from vla_runtime.engines.base import EngineConfig, EngineError
    from vla_runtime.engines.model_package import ModelPackageError, load_model_package

    try:
        token = read_token(token_file)
        pkg = load_model_package(package, EngineConfig(intra_op_threads=threads))
    except (ServeError, ModelPackageError, EngineError) as e:
        print(f"vla-runtime serve: {e}", file=sys.stderr)
        return 1
    try:
        runner = PolicyRunner(pkg, seed=seed)
        server = PolicyServer(runner, host, port, token, allow_remote, int(max_message_mb * (1 << 20)))
    except (ServeError, ValueError, OSError) as e:
        pkg.close()
        print(f"vla-runtime serve: {e}", file=sys.stderr)
        return 1
    cams = ", ".join(f"{c} {v[0]}x{v[1]}" if v else c for c, v in server.metadata()["cameras"].items())
    print(f"serving {pkg.spec.name} on ws://{host}:{server.port} (openpi protocol; cameras {cams}; actions "
          f"[{pkg.spec.chunk_horizon}, {pkg.spec.action_dim}] in robot units; auth "
          f"{'Api-Key token required' if token else 'off (loopback)'}; GET /healthz, /stats)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        pkg.close()
    return 0
