"""Running the app under uvicorn: in the foreground (the CLI) or in a thread (tests, benchmarks)."""

from __future__ import annotations

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


def serve_forever(state: ServerState, host: str = "127.0.0.1", port: int = 8080, log_level: str = "info") -> None:
    """Serve until interrupted (uvicorn handles SIGINT/SIGTERM); stops the engine on the way out."""
    import uvicorn

    config = _config(state, log_level)
    config.host, config.port = host, port
    try:
        uvicorn.Server(config).run()
    finally:
        state.engine.stop()


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
