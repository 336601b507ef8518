"""Listening for HTTP: loopback checks, binding a port before the slow work, and running any ASGI
app under uvicorn in the foreground (the CLI) or in a thread (tests, benchmarks).

    sock = bind("127.0.0.1", 8080)        # a port in use is a ConfigError now, not after a model load
    run(app, sock)                        # until Ctrl-C / SIGTERM
    with Background(app) as srv: srv.url  # a free loopback port, in a daemon thread
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time

from iceburg_mlx.errors import ConfigError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port); ConfigError when the address is taken or cannot be bound."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        why = "already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise ConfigError(f"cannot listen on {host}:{port}: {why}") from None
    return sock


def _config(app, log_level: str, lifespan: str):
    import uvicorn

    return uvicorn.Config(app, log_level=log_level, lifespan=lifespan, access_log=False, timeout_graceful_shutdown=5)


def run(app, sock: socket.socket, log_level: str = "info", lifespan: str = "on") -> None:
    """Serve `app` on the bound `sock` until interrupted (uvicorn handles SIGINT / SIGTERM)."""
    import uvicorn

    try:
        uvicorn.Server(_config(app, log_level, lifespan)).run(sockets=[sock])
    finally:
        sock.close()


class Background:
    """`app` under uvicorn in a daemon thread on a free port of `host`; a context manager."""

    def __init__(self, app, host: str = "127.0.0.1", log_level: str = "warning", lifespan: str = "on",
                 name: str = "iceburg-http"):
        import uvicorn

        self.sock = bind(host, 0)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(_config(app, log_level, lifespan))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name=name,
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Background:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> Background:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["LOOPBACK_NAMES", "Background", "bind", "is_loopback", "run"]
