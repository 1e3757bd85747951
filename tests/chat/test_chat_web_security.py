"""``cellrlhf serve`` against an attacker, through real HTTP: server paths sent as uploads, other
sessions' prediction files, and the login a non-loopback host needs."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

from tests.fixtures.tiny_cell_model import TARGETS

EXPLOIT = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ pure functions
def test_parse_auth_and_loopback():
    from cellrlhf.chat.web_security import is_loopback, parse_auth

    assert parse_auth("alice:s3:cret, bob:pw") == [("alice", "s3:cret"), ("bob", "pw")]
    assert parse_auth("") is None and parse_auth(None) is None
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(ValueError, match="USER:PASSWORD"):
            parse_auth(bad)
    assert [is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2")] == [True] * 4
    assert [is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org")] == [False] * 4


def test_download_owners(tmp_path):
    from cellrlhf.chat.web_security import DownloadOwners

    owners = DownloadOwners()
    f = tmp_path / "p.h5ad"
    f.write_text("x")
    assert owners.allowed(f, "a")  # nobody's file: gradio's own rules apply
    owners.grant(f, "a")
    assert owners.allowed(f, "a") and not owners.allowed(f, "b") and not owners.allowed(f, None)
    assert owners.allowed(tmp_path / "." / "p.h5ad", "a")  # same file, other spelling
    owners.grant(f, "b")  # the same content predicted by two clients is both theirs
    assert owners.allowed(f, "b")
    assert owners.revoke("a") == [] and owners.revoke("b") == [str(f.resolve())]


def test_host_warning_names_the_login():
    pytest.importorskip("gradio")
    from cellrlhf.chat.web import _host_warning

    assert _host_warning("127.0.0.1", None) is None
    text = _host_warning("0.0.0.0", None)
    assert "no login" in text and "CELLRLHF_SERVE_AUTH" in text and "--auth" in text
    assert "login is required" in _host_warning("0.0.0.0", [("a", "b")])


# ------------------------------------------------------------------ `cellrlhf serve` over HTTP
@contextlib.contextmanager
def _serve(model_dir, *args, env=None):
    port = _free_port()
    extra = env or {}
    env = {k: v for k, v in os.environ.items() if k != "CELLRLHF_SERVE_AUTH"}
    env.update({"OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False", **extra})
    proc = subprocess.Popen(
        [sys.executable, "-m", "cellrlhf", "serve", "--model", str(model_dir)]
        + ["--port", str(port), "--no-example", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield port, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_up(port: int, proc) -> None:
    import httpx

    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
            return
        except httpx.HTTPError:
            time.sleep(1)
    raise AssertionError(proc.stdout.read() if proc.poll() is not None else "server not up")


def _call(client, base: str, api_name: str, data: list) -> str:
    """Gradio's HTTP API: POST the call, read its event stream; returns the stream text."""
    r = client.post(f"{base}/gradio_api/call/{api_name}", json={"data": data}, timeout=30)
    assert r.status_code == 200, r.text
    event_id = r.json()["event_id"]
    with client.stream("GET", f"{base}/gradio_api/call/{api_name}/{event_id}", timeout=60) as s:
        return "".join(s.iter_text())


@pytest.mark.slow
def test_serve_refuses_a_server_path_sent_as_an_upload(tiny_model_dir):
    pytest.importorskip("gradio")
    import httpx

    with _serve(tiny_model_dir) as (port, proc):
        _wait_up(port, proc)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client() as client:
            page = client.get(f"{base}/config").text
            assert "cellrlhf: tiny_cell_model" in page  # the app's title
            stream = _call(client, base, "load_upload", [EXPLOIT, None])
    assert "event: error" in stream and "not uploaded by a user" in stream, stream
    assert "root:" not in stream  # nothing of the file came back
    proc_out = proc.stdout.read()
    assert "reachable from other machines" not in proc_out


@pytest.mark.slow
def test_serve_on_a_public_host_warns_and_asks_for_a_login(tiny_model_dir):
    pytest.importorskip("gradio")
    import httpx

    env = {"CELLRLHF_SERVE_AUTH": "alice:s3cret"}
    with _serve(tiny_model_dir, "--host", "0.0.0.0", env=env) as (port, proc):
        _wait_up(port, proc)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client() as anonymous:
            assert anonymous.get(f"{base}/config").status_code == 401
            r = anonymous.post(
                f"{base}/gradio_api/call/load_upload", json={"data": [EXPLOIT, None]}
            )
            assert r.status_code == 401
        with httpx.Client() as user:
            bad = user.post(f"{base}/login", data={"username": "alice", "password": "nope"})
            assert bad.status_code == 400
            ok = user.post(f"{base}/login", data={"username": "alice", "password": "s3cret"})
            assert ok.status_code == 200, ok.text
            assert "cellrlhf: tiny_cell_model" in user.get(f"{base}/config").text
            stream = _call(user, base, "load_upload", [EXPLOIT, None])
            assert "not uploaded by a user" in stream
    out = proc.stdout.read()
    assert "binding 0.0.0.0" in out and "login is required" in out
    assert "s3cret" not in out  # the password is never logged


# ------------------------------------------------------------------ one session's downloads
class _Session:
    """A browser-like client of gradio's queue: one session hash, one cookie jar."""

    def __init__(self, base: str, config: dict):
        import httpx

        self.base = base
        self.client = httpx.Client(timeout=60)
        self.client.get(f"{base}/")  # the page sets the client cookie
        self.session_hash = uuid.uuid4().hex[:11]
        self.fn = {d["api_name"]: d["id"] for d in config["dependencies"] if d.get("api_name")}

    def run(self, api_name: str, data: list) -> list:
        join = self.client.post(
            f"{self.base}/gradio_api/queue/join",
            json={
                "data": data,
                "fn_index": self.fn[api_name],
                "session_hash": self.session_hash,
                "event_data": None,
                "trigger_id": None,
            },
        )
        assert join.status_code == 200, join.text
        url = f"{self.base}/gradio_api/queue/data?session_hash={self.session_hash}"
        with self.client.stream("GET", url) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "process_completed":
                    assert message.get("success"), message
                    return message["output"]["data"]
        raise AssertionError(f"{api_name}: no result")


@pytest.mark.slow
def test_a_prediction_file_is_served_to_its_own_session_only(lm):
    pytest.importorskip("gradio")
    import httpx

    from cellrlhf.chat.web import build_app, launch_app

    demo = build_app(lm, max_new_tokens=24)
    port = _free_port()
    launch_app(demo, port=port, prevent_thread_lock=True, quiet=True)
    base = f"http://127.0.0.1:{port}"
    try:
        config = httpx.get(f"{base}/config").json()
        owner, other = _Session(base, config), _Session(base, config)
        owner.run("load_example", [None])
        owner.run("select_from_box", [None, None, "3"])
        outputs = owner.run("predict", [TARGETS[0], "", "", 2, None, None])
        download = next(
            o for o in outputs if isinstance(o, dict) and o.get("path", "").endswith(".h5ad")
        )
        url = download["url"]
        assert owner.client.get(url).status_code == 200
        assert other.client.get(url).status_code == 403
        assert httpx.get(url).status_code == 403  # a client without the cookie
    finally:
        demo.close()
