"""The model server under uvicorn (`iceburg_mlx.listen`): in the foreground (the CLI) or in a thread
(tests, benchmarks); stopping it stops the decode engine."""

from __future__ import annotations

import socket

from iceburg_mlx import listen
from iceburg_mlx.serve.state import ServerState

bind, is_loopback = listen.bind, listen.is_loopback


def serve_forever(state: ServerState, sock: socket.socket, log_level: str = "info") -> None:
    """Serve on the bound `sock` until interrupted; stops the engine on the way out."""
    from iceburg_mlx.serve.app import create_app

    try:
        listen.run(create_app(state), sock, log_level)
    finally:
        state.engine.stop()


class BackgroundServer(listen.Background):
    """The server for `state` in a daemon thread on a free port of `host` (loopback by default)."""

    def __init__(self, state: ServerState, host: str = "127.0.0.1", log_level: str = "warning"):
        from iceburg_mlx.serve.app import create_app

        super().__init__(create_app(state), host, log_level)
        self.state = state

    def stop(self) -> None:
        super().stop()
        self.state.engine.stop()
