"""An HTTP proxy in front of an S3 endpoint that counts, delays and fails requests.

Object stores are slow (20–50 ms per request) and fail in their own ways (``503 SlowDown`` when
throttled, ``500`` now and then, connections dropped). :class:`S3Proxy` forwards every request to
a real endpoint (moto's server on 127.0.0.1 in omeloc's tests) after ``delay_ms``, counts requests
by method and kind (metadata document, chunk or other object, listing), and answers the requests
that :attr:`S3Proxy.fail` selects with an S3 error instead of forwarding them.

    proxy = S3Proxy(target_port=moto_port, delay_ms=20).start()
    ...  # point AWS_ENDPOINT_URL at proxy.endpoint
    proxy.counts()  # {"total": 1234, "GET metadata": 480, ...}
"""

from __future__ import annotations

import http.client
import http.server
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from omeloc.ngff.documents import is_metadata_key

__all__ = ["S3Proxy", "free_port", "request_kind"]


def request_kind(method: str, path: str) -> str:
    """``"METHOD kind"``: kind ``metadata`` (a zarr document), ``list`` or ``chunk_or_other``."""
    bare = path.split("?", 1)[0]
    if "list-type" in path or (method == "GET" and bare.count("/") <= 1):
        kind = "list"
    elif is_metadata_key(bare):
        kind = "metadata"
    else:
        kind = "chunk_or_other"
    return f"{method} {kind}"


_SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


class S3Proxy:
    """A threaded HTTP proxy on 127.0.0.1 that forwards to ``127.0.0.1:target_port``.

    Parameters
    ----------
    target_port : int
        Port of the S3 endpoint forwarded to.
    delay_ms : float
        Added to every request before it is forwarded (requests in flight wait concurrently).
    fail : callable, optional
        ``fail(method, path, n)`` → an HTTP status to answer instead of forwarding (``503``:
        S3's ``SlowDown``), or ``None``; ``n`` counts the requests seen so far (from 1).
    """

    def __init__(
        self,
        target_port: int,
        delay_ms: float = 0.0,
        fail: Callable[[str, str, int], int | None] | None = None,
    ) -> None:
        self.target_port = target_port
        self.delay_ms = float(delay_ms)
        self.fail = fail
        self._lock = threading.Lock()
        self._by: dict[str, int] = {}
        self._paths: dict[str, int] = {}
        self._seen = 0
        self.failed = 0
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- counts -------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the requests counted so far."""
        with self._lock:
            self._by, self._paths, self.failed = {}, {}, 0

    def counts(self) -> dict[str, int]:
        """``{"total": n, "GET metadata": ..., ...}`` since the last :meth:`reset`."""
        with self._lock:
            return {"total": sum(self._by.values()), **dict(sorted(self._by.items()))}

    def repeated(self, most: int = 12) -> dict[str, int]:
        """The requests made more than once (method and path), most repeated first."""
        with self._lock:
            twice = sorted(((n, p) for p, n in self._paths.items() if n > 1), reverse=True)[:most]
        return {p: n for n, p in twice}

    def _count(self, method: str, path: str) -> int:
        with self._lock:
            kind = request_kind(method, path)
            self._by[kind] = self._by.get(kind, 0) + 1
            where = f"{method} {path}"
            self._paths[where] = self._paths.get(where, 0) + 1
            self._seen += 1
            return self._seen

    # -- serving ------------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._server is not None, "start() the proxy first"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT``: the endpoint URL to give the S3 client."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, port: int = 0) -> S3Proxy:
        """Serve on ``port`` (0: a free one) in a daemon thread; returns itself."""
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="s3proxy", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> S3Proxy:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _forward(self) -> None:
                n = proxy._count(self.command, self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.delay_ms:
                    time.sleep(proxy.delay_ms / 1000)
                status = proxy.fail(self.command, self.path, n) if proxy.fail is not None else None
                if status is not None:
                    with proxy._lock:
                        proxy.failed += 1
                    self._answer(status, _SLOW_DOWN, [("Content-Type", "application/xml")])
                    return
                conn = http.client.HTTPConnection("127.0.0.1", proxy.target_port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    kept = [
                        (k, v)
                        for k, v in resp.getheaders()
                        if k.lower() not in ("transfer-encoding", "connection", "content-length")
                    ]
                    self._answer(resp.status, data, kept, reason=resp.reason)
                finally:
                    conn.close()

            def _answer(
                self,
                status: int,
                data: bytes,
                headers: list[tuple[str, str]],
                reason: str | None = None,
            ) -> None:
                self.send_response(status, reason)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        return Handler


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
