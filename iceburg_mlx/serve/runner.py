"""Running the app under uvicorn: in the foreground (the CLI) or in a thread (tests, benchmarks)."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time

from iceburg_mlx.serve.state import ServerState

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _config(state: ServerState, log_level: str):
    import uvicorn

    from iceburg_mlx.serve.app import create_app

    return uvicorn.Config(create_app(state), log_level=log_level, lifespan="on", access_log=False,
                          timeout_graceful_shutdown=5)


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready socket on (host, port), taken before the model loads so that a port in
    use is reported at once; ConfigError when the address is taken or cannot be bound."""
    from iceburg_mlx.errors import ConfigError

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


def serve_forever(state: ServerState, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on the bound `sock` until interrupted (uvicorn handles SIGINT/SIGTERM); stops the
    engine on the way out."""
    import uvicorn

    try:
        uvicorn.Server(_config(state, log_level)).run(sockets=[sock])
    finally:
        state.engine.stop()
        sock.close()


class BackgroundServer:
    """uvicorn in a daemon thread on a free port of `host` (loopback by default); a context manager."""

    def __init__(self, state: ServerState, host: str = "127.0.0.1", log_level: str = "warning"):
        import uvicorn

        self.state = state
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(_config(state, log_level))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="iceburg-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> BackgroundServer:
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
        self.state.engine.stop()
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
