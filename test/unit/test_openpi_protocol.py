"""openpi's wire format: numpy arrays as maps (keys as msgpack bin, as openpi-client writes and reads them),
never pickle; refusals name what was wrong; the openpi_remote engine's config."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from vla_runtime.core.config import EngineConfig
from vla_runtime.engines.openpi_protocol import ProtocolError, auth_value, pack, unpack


def test_round_trip_and_the_clients_own_spelling() -> None:
    obs = {"scene": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "state": np.ones(8, np.float32),
           "prompt": "pick", "meta": {"k": np.float32(2.5)}, "flag": np.bool_(True)}
    got = unpack(pack(obs), 1 << 20)
    np.testing.assert_array_equal(got["scene"], obs["scene"])
    assert got["state"].dtype == np.float32 and got["prompt"] == "pick" and float(got["meta"]["k"]) == 2.5
    raw = msgpack.unpackb(pack({"a": np.zeros(2, np.float32)}), raw=False)
    assert set(raw["a"]) == {b"__ndarray__", b"data", b"dtype", b"shape"}  # openpi-client only reads bin keys
    client_style = msgpack.packb({"a": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "<f4", b"shape": (2,)}})
    np.testing.assert_array_equal(unpack(client_style, 1 << 20)["a"], np.zeros(2, np.float32))
    assert auth_value("tok") == "Api-Key tok"


@pytest.mark.parametrize(("message", "match"), [
    (b"\xc1", "not a msgpack message"),
    (msgpack.packb([1, 2]), "expected a map at the top level, got list"),
    (msgpack.packb({"a": {"__ndarray__": True, "data": b"x", "dtype": "|O", "shape": [1]}}), "'|O' is refused"),
    (msgpack.packb({"a": {"__ndarray__": True, "data": b"x" * 16, "dtype": "<c8", "shape": [2]}}), "'<c8' is refused"),
    (msgpack.packb({"a": {"__ndarray__": True, "data": b"x" * 3, "dtype": "<f4", "shape": [1]}}),
     "needs 4 bytes, got 3"),
    (msgpack.packb({"a": {"__ndarray__": True, "data": b"x", "dtype": "nonsense", "shape": [1]}}), "not a numpy dtype"),
    (msgpack.packb({"a": {"__ndarray__": True, "data": b"x", "dtype": "|u1", "shape": [-1]}}), "shape \\(up to 8"),
    (msgpack.packb({"a": {"__npgeneric__": True, "data": "x", "dtype": "|O"}}), "scalar of dtype '|O' is refused"),
    (msgpack.packb({1: 2}), "map keys must be strings"),
    (b"\0" * 2000, "exceeds the limit of 1000"),
])
def test_refusals_name_the_problem(message: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        unpack(message, 1000)


def test_pack_refuses_what_it_cannot_send() -> None:
    with pytest.raises(ProtocolError, match="dtype object"):
        pack({"a": np.array([object()])})


def test_openpi_remote_config() -> None:
    cfg = EngineConfig(backend="openpi_remote", url="ws://robot-pc:8000", api_key_file="/etc/vla/token")
    assert cfg.timeout_s == 5.0
    with pytest.raises(ValueError, match="needs url: ws://host:port or wss://..., got 'http://x'"):
        EngineConfig(backend="openpi_remote", url="http://x")
    with pytest.raises(ValueError, match="apply to backend 'openpi_remote' only, got backend 'onnxruntime'"):
        EngineConfig(url="ws://x:1")
