"""Real network faults on loopback: a server that never answers, and a proxy that can be cut."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading


class BlackHole:
    """Accepts TCP connections and never sends a byte: a stuck server, a half-open load
    balancer. Connections are held open until close()."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self._listener.accept()
                self._held.append(conn)

    def close(self) -> None:
        self._listener.close()
        for conn in self._held:
            conn.close()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CuttableProxy:
    """Forwards 127.0.0.1:port to a target port, and can be cut like a network partition.

    cut(): each client connection is reset (the client sees "connection reset", as after a
    crash) and new ones are refused, while the server is told nothing: its ends stay open and
    unanswered until close(), as when a partition or a dead client machine leaves a session
    half-open on the server. Whatever such a session held (a transaction's row locks, an
    advisory lock) it keeps until the server ends it. restore() listens again on the same port.

    mute(): the connections open now stay open and silent, both ways (what each side sends is
    dropped, and neither side learns that the other closed), as behind a stuck middlebox or a
    server process that stopped answering; TCP itself stays alive. New connections work.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._abandoned: list[socket.socket] = []  # the server ends of cut connections
        self._listener: socket.socket | None = None
        self.port = 0
        self.restore()

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            for link in self._links:
                link.cut = True
                self._abandoned.append(link.upstream)
                _reset(link.client)
            self._links.clear()

    def mute(self) -> None:
        with self._lock:
            for link in self._links:
                link.muted = True

    def close(self) -> None:
        self.cut()
        with self._lock:
            for sock in self._abandoned:
                _shut(sock)
            self._abandoned.clear()

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = listener.accept()
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target_port))
                except OSError:
                    client.close()
                    continue
                link = _Link(client, upstream)
                with self._lock:
                    if self._listener is not listener:  # cut while this one was accepted
                        _reset(client)
                        self._abandoned.append(upstream)
                        continue
                    self._links.append(link)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pipe, args=(link, a, b), daemon=True).start()

    @staticmethod
    def _pipe(link: _Link, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not link.muted:
                    sink.sendall(data)
        if not (link.cut or link.muted):  # an ordinary end: pass it on to both sides
            _shut(source)
            _shut(sink)


class _Link:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.cut = False
        self.muted = False


def _reset(sock: socket.socket) -> None:
    """Reset (RST, not FIN) a connection, waking a thread blocked reading it: close() alone
    would not, and the socket would live on until that read returned."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
