"""A TCP proxy that can hold one direction: how the relay is stopped between publish and mark.

The relay reaches PostgreSQL through it. Once `hold()` is called, bytes from the client
are read and dropped instead of forwarded (answers still flow back): the relay's next
statement (after its claim: `mark_published`) never reaches the database, however long
it waits, so killing the relay then leaves rows that were published and never marked.
"""

from __future__ import annotations

import socket
import threading

from .util import free_port


class HoldingProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream = upstream_port
        self.port = free_port()
        self.held = threading.Event()
        self.dropped = 0  # client bytes dropped while held
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, self.port))
        self._listener.listen(64)
        threading.Thread(target=self._accept, name="chaos-proxy", daemon=True).start()

    def hold(self) -> None:
        self.held.set()

    def close(self) -> None:
        self._closed.set()
        for s in [self._listener, *self._sockets]:
            try:
                s.close()
            except OSError:
                pass

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((self.host, self.upstream), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if from_client and self.held.is_set():
                    self.dropped += len(data)
                    continue
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
