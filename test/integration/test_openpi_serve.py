"""openpi's protocol both ways: the official ``openpi-client`` (PyPI 0.1.2, in its own venv: it pins
numpy < 2) against ``vla-runtime serve``, and our ``openpi_remote`` engine against the same server.

Both get the in-process engine's actions (max |Δ| ≤ 1e-5); a client without the token, malformed
frames, an unknown key and an oversize frame are refused and counted, and the server keeps serving.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from vla_runtime.core.config import PROJECT_ROOT
from vla_runtime.core.policy import PolicyRunner
from vla_runtime.engines import EngineConfig, EngineError
from vla_runtime.engines.model_package import ModelPackageError, load_model_package

pytestmark = pytest.mark.integration

PKG = PROJECT_ROOT / "test" / "fixtures" / "lerobot" / "pi0"
CLIENT_PY = PROJECT_ROOT / "build" / "venv-openpi-client" / "bin" / "python"
TOKEN = "test-token-0123456789abcdef"

CLIENT = textwrap.dedent('''
    import json, sys
    import msgpack, numpy as np
    import websockets.sync.client as wsc
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    port, token, ref_path, out_path = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    r = np.load(ref_path)
    def obs(k):
        return {"scene": r[f"in{k}_image_scene"], "wrist": r[f"in{k}_image_wrist"], "state": r[f"in{k}_state"],
                "prompt": str(r[f"in{k}_prompt"]), "noise": r[f"in{k}_noise"]}
    res = {}
    client = WebsocketClientPolicy("127.0.0.1", int(port), api_key=token)
    md = client.get_server_metadata()
    res["metadata"] = {k: md[k] for k in ("policy", "action_shape", "auth_required", "cameras")}
    acts = [client.infer(obs(k)) for k in (0, 1)]
    res["timing"] = acts[0]["server_timing"]
    try:
        WebsocketClientPolicy("127.0.0.1", int(port))
        res["no_token"] = "accepted"
    except Exception as e:
        res["no_token"] = f"{type(e).__name__}: {e}"
    try:
        client.infer({**obs(0), "gripper_force": np.zeros(1)})
        res["unknown_key"] = "accepted"
    except RuntimeError as e:
        res["unknown_key"] = str(e)
    raw = wsc.connect(f"ws://127.0.0.1:{port}", additional_headers={"Authorization": "Api-Key " + token},
                      max_size=None)
    raw.recv()  # metadata
    replies = []
    for frame in (b"\\xc1 not msgpack",
                  msgpack.packb({"scene": {b"__ndarray__": True, b"data": b"xxxx", b"dtype": "|O", b"shape": [1]}}),
                  msgpack.packb({"state": {b"__ndarray__": True, b"data": b"\\0" * 3, b"dtype": "<f4", b"shape": [8]}}),
                  "a text frame"):
        raw.send(frame)
        replies.append(raw.recv())
    res["malformed"] = replies
    try:
        raw.send(b"\\0" * (2 << 20))  # over --max-message-mb 1
        raw.recv()
        res["oversize"] = "accepted"
    except Exception as e:
        res["oversize"] = f"{type(e).__name__}: {e}"
    acts.append(client.infer(obs(1)))  # the server keeps serving
    np.savez(out_path, *[a["actions"] for a in acts])
    print(json.dumps(res))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                 headers={"Authorization": f"Api-Key {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def client_python() -> Path:
    if not CLIENT_PY.is_file():
        proc = subprocess.run(["make", "openpi-client-env"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=600, check=False)
        if proc.returncode != 0:
            pytest.skip(f"cannot build the openpi-client venv (make openpi-client-env): {proc.stderr[-500:]}")
    return CLIENT_PY


@pytest.fixture
def server(tmp_path: Path):
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN + "\n")
    env = {k: v for k, v in os.environ.items() if k != "VLA_SERVE_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-m", "vla_runtime.cli", "serve", str(PKG), "--port", str(port),
                             "--token-file", str(tmp_path / "token"), "--max-message-mb", "1"],
                            cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if _get(port, "/healthz") == (200, "OK\n"):
                break
        except OSError:
            pass
        if proc.poll() is not None:
            pytest.fail(f"vla-runtime serve exited: {proc.stdout.read()}")
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("vla-runtime serve did not come up within 60 s")
    yield port, tmp_path / "token"
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _in_process() -> list[np.ndarray]:
    ref = np.load(PKG / "reference.npz")
    with load_model_package(PKG) as pkg:
        runner = PolicyRunner(pkg)
        return [runner.infer({c: ref[f"in{k}_image_{c}"] for c in ("scene", "wrist")}, str(ref[f"in{k}_prompt"]),
                             ref[f"in{k}_state"], noise=ref[f"in{k}_noise"]).actions for k in (0, 1)]


def test_official_openpi_client_gets_the_in_process_actions_and_bad_clients_are_refused(server, client_python,
                                                                                         tmp_path: Path) -> None:
    port, _ = server
    proc = subprocess.run([str(client_python), "-c", CLIENT, str(port), TOKEN, str(PKG / "reference.npz"),
                           str(tmp_path / "acts.npz")], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["metadata"] == {"policy": "tiny_pi0", "action_shape": [10, 8], "auth_required": True,
                               "cameras": {"scene": [48, 64, 3], "wrist": [48, 64, 3]}}
    want = _in_process()
    got = np.load(tmp_path / "acts.npz")
    for k, a in enumerate([got["arr_0"], got["arr_1"], got["arr_2"]]):
        assert a.shape == (10, 8) and a.dtype == np.float32
        assert np.max(np.abs(a - want[min(k, 1)])) <= 1e-5
    assert "401" in res["no_token"], res["no_token"]
    assert "unknown input key(s) ['gripper_force']" in res["unknown_key"]
    m = res["malformed"]
    assert m[0].startswith("refused: malformed request: not a msgpack message"), m
    assert "array dtype '|O' is refused" in m[1] and "needs 32 bytes, got 3" in m[2], m
    assert "expected a binary msgpack message, got a text message" in m[3], m
    assert "1009" in res["oversize"], res["oversize"]
    assert _get(port, "/stats")[0] == 401  # the counters need the token too
    code, body = _get(port, "/stats", TOKEN)
    stats = json.loads(body)
    assert code == 200 and stats["served"] == 3 and stats["refused_auth"] >= 2  # the client and /stats
    assert stats["refused_malformed"] == 4 and stats["refused_unknown_key"] == 1 and stats["refused_oversize"] == 1
    assert stats["errors"] == 0


def test_openpi_remote_engine_runs_the_served_policy(server) -> None:
    port, token_file = server
    ref = np.load(PKG / "reference.npz")
    want = _in_process()
    remote = EngineConfig(backend="openpi_remote", url=f"ws://127.0.0.1:{port}", api_key_file=str(token_file),
                          timeout_s=10)
    with load_model_package(PKG, fast=remote) as pkg:
        runner = PolicyRunner(pkg)
        assert pkg.fast_engine.provider == f"openpi_remote:ws://127.0.0.1:{port}"
        for k in (0, 1):
            frames = {c: ref[f"in{k}_image_{c}"] for c in ("scene", "wrist")}
            out = runner.infer(frames, str(ref[f"in{k}_prompt"]), ref[f"in{k}_state"], noise=ref[f"in{k}_noise"])
            assert np.max(np.abs(out.actions - want[k])) <= 1e-5
        feeds = {"scene": frames["scene"], "wrist": frames["wrist"], "state": ref["in1_state"]}
        with pytest.raises(EngineError, match=r"refused the observation: refused: unknown input key\(s\) \['force'\]"):
            pkg.fast_engine.infer({**feeds, "force": np.zeros(1, np.float32)})
        with pytest.raises(EngineError, match=r"feed 'state' is \[7\] float32, the server takes state\[8\]"):
            pkg.fast_engine.infer({**feeds, "state": np.zeros(7, np.float32)})
        out = runner.infer(frames, "pick", ref["in1_state"], noise=ref["in1_noise"])  # the connection goes on
        assert out.actions.shape == (10, 8)
    with pytest.raises(EngineError, match="HTTP 401 \\(missing or wrong api key\\)"):
        load_model_package(PKG, fast=EngineConfig(backend="openpi_remote", url=f"ws://127.0.0.1:{port}"))
    with pytest.raises(ModelPackageError, match="the server takes cameras \\['scene', 'wrist'\\], the package "
                                                "describes \\['scene'\\]"):
        load_model_package(PKG.parent / "act", fast=remote)


def test_serve_binds_beyond_loopback_only_when_told_and_with_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VLA_SERVE_TOKEN"}
    cmd = [sys.executable, "-m", "vla_runtime.cli", "serve", str(PKG), "--host", "0.0.0.0", "--port", "0"]
    p = subprocess.run(cmd, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1 and "binds to loopback only unless --allow-remote" in p.stderr
    p = subprocess.run(cmd + ["--allow-remote"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                       timeout=60, check=False)
    assert p.returncode == 1 and "needs an auth token (--token-file or $VLA_SERVE_TOKEN)" in p.stderr
    (tmp_path / "short").write_text("abc")
    p = subprocess.run(cmd + ["--allow-remote", "--token-file", str(tmp_path / "short")], cwd=PROJECT_ROOT, env=env,
                       capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode == 1 and "at least 16 characters" in p.stderr
