"""Tests of resolve_data_path's cache and downloader against a real HTTP server on 127.0.0.1.

Every URL here points at 127.0.0.1; proxies are switched off so nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from npgru import download
from npgru.data import read_text
from npgru.download import DATA_FILE_NAME, resolve_data_path
from npgru.errors import DataError

PAYLOAD = b"The Time Machine, a small stand-in.\nIt was the time traveller.\n" * 50
PAYLOAD_SHA1 = hashlib.sha1(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.delenv("NPGRU_DATA_DIR", raising=False)
    # the real d2l URL must never be fetched: fail loudly if any code tries
    real_urlopen = urllib.request.urlopen

    def local_only(url, *args, **kwargs):
        if "://" in str(url):
            assert str(url).startswith("http://127.0.0.1:"), f"non-local URL {url!r}"
        return real_urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", local_only)


class Server:
    """A ThreadingHTTPServer on 127.0.0.1 that serves PAYLOAD and counts requests.

    Quiet, and gone when closed: close() wakes a handler that waits out ``delay`` and joins
    every thread the server started, and errors (a client that hung up first) are kept in
    ``errors``, not printed. A handler thread left running would print into the captured
    output of whichever test runs next.
    """

    def __init__(self):
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.delay = 0.0
        self.short_body = False
        self.closing = threading.Event()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                owner.requests.append(self.path)
                if owner.delay and owner.closing.wait(owner.delay):
                    return  # the server is closing: the client has long given up
                if self.path == "/timemachine.txt":
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                    self.end_headers()
                    # short_body: the connection closes halfway through the promised bytes
                    self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2] if owner.short_body else PAYLOAD)
                    self.close_connection = True
                else:
                    self.send_error(404, "Not Found")

            def log_message(self, *args):  # keep the test output clean
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            daemon_threads = False  # so that server_close() joins the handler threads
            block_on_close = True

            def handle_error(self, request, client_address):
                owner.errors.append(repr(sys.exc_info()[1]))

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str = "/timemachine.txt") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()  # joins the handler threads
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def closed_port_url() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/timemachine.txt"


def test_download_verify_cache_then_reuse(server, tmp_path):
    cache = tmp_path / "cache" / "nested"  # created on demand
    path = resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=cache, timeout=5)
    assert path == cache / DATA_FILE_NAME
    assert path.read_bytes() == PAYLOAD
    assert sorted(p.name for p in cache.iterdir()) == [DATA_FILE_NAME]  # no temp file left
    assert server.requests == ["/timemachine.txt"]
    assert read_text(path) == PAYLOAD.decode()

    again = resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=cache, timeout=5)
    assert again == path
    assert server.requests == ["/timemachine.txt"]  # served from the cache
    # the cached copy is found even when the server is gone
    assert resolve_data_path(url=closed_port_url(), sha1=PAYLOAD_SHA1, cache_dir=cache) == path


def test_sha1_is_case_insensitive(server, tmp_path):
    path = resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1.upper(), cache_dir=tmp_path)
    assert path.read_bytes() == PAYLOAD


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    wrong = "0" * 40
    with pytest.raises(DataError, match="wrong checksum") as info:
        resolve_data_path(url=server.url(), sha1=wrong, cache_dir=tmp_path, timeout=5)
    msg = str(info.value)
    assert "\n" not in msg
    assert PAYLOAD_SHA1 in msg and wrong in msg
    assert "path of a copy" in msg and str(tmp_path / DATA_FILE_NAME) in msg
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one
    assert server.requests == ["/timemachine.txt"]


def test_truncated_body_leaves_nothing(server, tmp_path):
    server.short_body = True
    with pytest.raises(DataError, match="ended early") as info:
        resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=tmp_path, timeout=5)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_http_404(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404") as info:
        resolve_data_path(
            url=server.url("/missing.txt"), sha1=PAYLOAD_SHA1, cache_dir=tmp_path, timeout=5
        )
    msg = str(info.value)
    assert "\n" not in msg and "path of a copy" in msg and server.url("/missing.txt") in msg
    assert list(tmp_path.iterdir()) == []


def test_server_down_fails_fast(tmp_path):
    url = closed_port_url()
    start = time.monotonic()
    with pytest.raises(DataError, match="download of") as info:
        resolve_data_path(url=url, sha1=PAYLOAD_SHA1, cache_dir=tmp_path, timeout=2)
    assert time.monotonic() - start < 2
    msg = str(info.value)
    assert "\n" not in msg and url in msg and "path of a copy" in msg
    assert list(tmp_path.iterdir()) == []


def test_slow_server_times_out(server, tmp_path):
    server.delay = 1.5
    start = time.monotonic()
    with pytest.raises(DataError, match="timed out") as info:
        resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=tmp_path, timeout=0.3)
    assert time.monotonic() - start < 1.4
    assert "path of a copy" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_bad_url_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="download of"):
        resolve_data_path(url="not a url", sha1=PAYLOAD_SHA1, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_cached_file_is_reported_not_replaced(server, tmp_path):
    cached = tmp_path / DATA_FILE_NAME
    cached.write_bytes(PAYLOAD[:-1])
    with pytest.raises(DataError, match="corrupt") as info:
        resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=tmp_path)
    msg = str(info.value)
    assert "delete it" in msg and "path of a copy" in msg and str(cached) in msg
    assert cached.read_bytes() == PAYLOAD[:-1]  # left for the user to inspect
    assert server.requests == []


def test_cache_path_that_is_a_directory(tmp_path):
    (tmp_path / DATA_FILE_NAME).mkdir()
    with pytest.raises(DataError, match="directory"):
        resolve_data_path(url=closed_port_url(), sha1=PAYLOAD_SHA1, cache_dir=tmp_path)


def test_unwritable_cache_dir(server, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cache directory"):
        resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=blocker / "sub", timeout=5)


def test_failed_first_download_leaves_no_cache_directory(tmp_path):
    """Offline, a first run leaves nothing behind: no partial file, no empty folder."""
    cache = tmp_path / "new" / "cache"
    with pytest.raises(DataError, match="download of"):
        resolve_data_path(url=closed_port_url(), sha1=PAYLOAD_SHA1, cache_dir=cache)
    assert not (tmp_path / "new").exists()


def test_env_var_names_the_cache_dir(server, tmp_path, monkeypatch):
    monkeypatch.setenv("NPGRU_DATA_DIR", str(tmp_path / "envcache"))
    path = resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, timeout=5)
    assert path == tmp_path / "envcache" / DATA_FILE_NAME
    assert path.read_bytes() == PAYLOAD
    # an explicit cache_dir wins over the variable
    other = resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=tmp_path / "arg")
    assert other == tmp_path / "arg" / DATA_FILE_NAME


def test_default_cache_dir_is_under_home(server, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, timeout=5)
    assert path == tmp_path / ".cache" / "npgru" / DATA_FILE_NAME
    assert path.read_bytes() == PAYLOAD


def test_explicit_path_wins_and_is_not_checksummed(server, tmp_path):
    own = tmp_path / "mine.txt"
    own.write_text("any text at all\n")
    assert resolve_data_path(own, url=server.url(), sha1=PAYLOAD_SHA1) == own
    assert resolve_data_path(str(own), url=server.url(), sha1=PAYLOAD_SHA1) == Path(own)
    assert server.requests == []
    # an explicit path is checked once, where it is read (read_text), never downloaded
    assert resolve_data_path(tmp_path / "missing.txt", url=server.url()) == tmp_path / "missing.txt"
    with pytest.raises(DataError, match="no such file"):
        read_text(resolve_data_path(tmp_path / "missing.txt", url=server.url()))
    assert server.requests == []


def test_oversized_response_is_refused(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "_MAX_DOWNLOAD_BYTES", len(PAYLOAD) // 3)
    with pytest.raises(DataError, match="over"):
        resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=tmp_path, timeout=5)
    assert list(tmp_path.iterdir()) == []


def test_a_closed_server_leaves_no_thread_behind(capfd, tmp_path):
    """A handler still waiting when its client gave up is done once close() returns, and
    says nothing: a thread left behind once printed its error into a later test's output."""
    before = set(threading.enumerate())
    server = Server()
    server.delay = 30.0
    with pytest.raises(DataError, match="timed out"):
        resolve_data_path(url=server.url(), sha1=PAYLOAD_SHA1, cache_dir=tmp_path, timeout=0.2)
    start = time.monotonic()
    server.close()
    assert time.monotonic() - start < 5
    assert set(threading.enumerate()) <= before, "the server left threads running"
    assert capfd.readouterr().err == ""
