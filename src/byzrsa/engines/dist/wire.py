"""byzrsa's own links between processes: frames over TCP sockets that a Byzantine peer cannot crash.

gloo aborts the whole receiving process (``std::terminate``) when a peer sends
more bytes than the receive buffer posted for it, and a Byzantine worker can
send whatever it likes. So the frames from workers travel over plain TCP
sockets that byzrsa reads itself: the 64-byte header first, checked against
what the *receiver* knows (its own model dimension and the largest frame it
accepts, never a size the sender claims), then exactly the payload it
announced, or, for a header it refuses, the announced bytes read and thrown
away (until the round's deadline) so that the next frame is read from its
start. A refused frame is :class:`Malformed`: the caller drops that message
as a Byzantine one and goes on.

:func:`check_frame` is the check of a decoded frame against what the round
expects (kind, iteration, dtype, size); the master uses it for every message,
and the peer-to-peer engine can use it for its neighbours' frames.

Authentication: with a shared token (:data:`TOKEN_ENV`, or the random one a
local launch hands its workers), a worker's first frame must carry it, and the
address the master publishes in the store is signed with it (HMAC-SHA256), so
a process that rewrites the store key cannot make workers talk to it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import select
import socket
import time
from typing import Any

import torch
from torch import Tensor

from byzrsa.engines.dist.transport import _DTYPES, HEADER_BYTES, MAGIC, Frame, Kind, Malformed, PeerLost, decode, log

__all__ = [
    "TOKEN_ENV",
    "BIND_ENV",
    "LINK_KEY",
    "check_frame",
    "uses_sockets",
    "SocketLink",
    "sign",
    "listen",
    "publish",
    "connect",
    "accept_links",
    "Unconnected",
    "token_from_env",
]

TOKEN_ENV = "BYZRSA_TOKEN"
BIND_ENV = "BYZRSA_BIND"
LINK_KEY = "byzrsa/links"
_DRAIN_CHUNK = 1 << 20
_GRACE = 1.0  # seconds a receive may read past its deadline, for bytes that keep arriving at once


def check_frame(
    frame: Frame,
    *,
    kind: Kind,
    iteration: int,
    dtype: torch.dtype | None = None,
    numel: int | None = None,
    rows: int | None = None,
) -> str | None:
    """Why ``frame`` is not the expected one (a line for the log), or None if it is.

    ``dtype``, ``numel`` and ``rows`` are checked when given: the receiver's
    own knowledge of the model, never the sender's.
    """
    if frame.kind != kind or frame.iteration != iteration:
        name = Kind(frame.kind).name if frame.kind in Kind._value2member_map_ else str(frame.kind)
        return f"expected {kind.name} of iteration {iteration}, got {name} of {frame.iteration}"
    if dtype is not None and frame.dtype != dtype:
        return f"dtype {frame.dtype}, expected {dtype}"
    if numel is not None and frame.numel != numel:
        return f"{frame.numel} entries, expected {numel}"
    if rows is not None and frame.rows != rows:
        return f"{frame.rows} rows, expected {rows}"
    return None


def uses_sockets(config: Any) -> bool:
    """Whether the master and its workers talk over byzrsa's sockets (gloo runs) or NCCL's links (GPU tensors)."""
    return config.backend != "nccl"


def sign(token: str, text: str) -> str:
    """HMAC-SHA256 of ``text`` under ``token`` (hex); the empty string without a token."""
    if not token:
        return ""
    return hmac.new(token.encode(), text.encode(), hashlib.sha256).hexdigest()


class SocketLink:
    """Frames to and from one peer over a connected TCP socket; the same methods as the gloo ``Link``.

    Receives land in one buffer of ``capacity`` bytes (the receiver's own
    bound). A header that is not byzrsa's, or that announces more than
    ``capacity``, or an unknown kind or dtype, is :class:`Malformed`; the bytes
    it announced are read and dropped first (up to the deadline), so the link
    stays in step. A closed connection or a missed deadline is :class:`PeerLost`.
    """

    def __init__(self, sock: socket.socket, capacity: int, peer_capacity: int, settle: float = 60.0) -> None:
        self.sock = sock
        self.capacity = capacity
        self.peer_capacity = peer_capacity
        self.settle = settle
        self.buffer = torch.zeros(capacity, dtype=torch.uint8)
        self._view = memoryview(self.buffer.numpy()).cast("B")
        self.closed: str | None = None
        self.first: Frame | None = None  # the greeting, read while the connection was accepted
        with contextlib.suppress(OSError):  # small frames go out at once (a Unix socket has no such option)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self) -> None:
        if self.closed:
            raise PeerLost(self.closed)

    def receive(self, deadline: float) -> Frame:
        """The next frame, waiting until ``deadline`` (time.monotonic) at most."""
        if self.closed:
            raise PeerLost(self.closed)
        if self.first is not None:
            frame, self.first = self.first, None
            return frame
        self._read_into(self._view[:HEADER_BYTES], deadline)
        words = self.buffer[:HEADER_BYTES].view(torch.int64).tolist()
        itemsize = _itemsize(words[3])
        if words[0] != MAGIC or itemsize is None or words[4] < 0:
            # Where the next frame starts is unknown: the link cannot be trusted any more.
            self._close("sent bytes that are not a byzrsa frame")
        announced = words[4] * itemsize
        if HEADER_BYTES + announced > self.capacity or words[1] not in Kind._value2member_map_:
            self._drain(announced, deadline)  # read and dropped, so that the next frame is read from its start
            if words[1] not in Kind._value2member_map_:
                raise Malformed(f"unknown frame kind {words[1]}")
            raise Malformed(f"a frame of {announced} payload bytes, more than the {self.capacity - HEADER_BYTES} accepted")
        self._read_into(self._view[HEADER_BYTES : HEADER_BYTES + announced], deadline)
        return decode(self.buffer[: HEADER_BYTES + announced])

    def send(self, frame: Tensor) -> None:
        if self.closed:
            raise PeerLost(self.closed)
        frame = frame.detach().cpu().contiguous()
        if frame.numel() > self.peer_capacity:  # the peer would drop it: a bug on this side
            raise ValueError(f"frame of {frame.numel()} bytes exceeds the peer's buffer ({self.peer_capacity})")
        try:
            self.sock.settimeout(self.settle)
            self.sock.sendall(memoryview(frame.numpy()).cast("B"))
        except (OSError, ValueError) as exc:
            self._close("timed out" if isinstance(exc, TimeoutError) else "connection closed (process ended)")

    def flush(self, deadline: float) -> None:  # sendall has handed every byte to the kernel
        return None

    def close(self) -> None:
        self.closed = self.closed or "closed"
        try:
            self.sock.close()
        except OSError:
            pass

    def _read_into(self, view: memoryview, deadline: float, strict: bool = False) -> None:
        """Fill ``view``. Past the deadline, bytes already waiting are still read (as gloo's completed receives
        are): the master reads its workers one after the other, and one slow worker must not cost the next."""
        got = 0
        while got < len(view):
            remaining = deadline - time.monotonic()
            if remaining <= (0 if strict else -_GRACE):  # bounded: a peer that trickles bytes cannot hold us
                self._close("timed out")
            remaining = max(remaining, 0.001)
            try:
                self.sock.settimeout(remaining)
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                self._close("timed out")
            except OSError:
                self._close("connection closed (process ended)")
            if n == 0:
                self._close("connection closed (process ended)")
            got += n

    def _drain(self, count: int, deadline: float) -> None:
        scratch = bytearray(min(count, _DRAIN_CHUNK))
        view = memoryview(scratch)
        while count > 0:
            part = min(count, len(scratch))
            self._read_into(view[:part], deadline, strict=True)
            count -= part

    def _close(self, reason: str) -> None:
        self.closed = reason
        try:
            self.sock.close()
        except OSError:
            pass
        raise PeerLost(reason) from None


def _itemsize(code: int) -> int | None:
    dtype = _DTYPES.get(code)
    return torch.empty(0, dtype=dtype).element_size() if dtype is not None else None


# ------------------------------------------------------------------------------------------- rendezvous


def listen(host: str) -> socket.socket:
    """The master's listening socket on ``host`` (an interface address; port chosen by the kernel)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, 0), family=family, backlog=1024)


def publish(store: Any, listener: socket.socket, token: str, key: str = LINK_KEY) -> None:
    """Put the listener's address in the store under ``key``, signed with the token, for the workers to find."""
    host, port = listener.getsockname()[:2]
    address = f"{host}|{port}"
    store.set(key, json.dumps({"address": address, "mac": sign(token, address)}))


def connect(store: Any, token: str, deadline: float, key: str = LINK_KEY) -> socket.socket:
    """Worker: the master's published address (its signature checked), connected; :class:`PeerLost` if not.

    ``key``: another listener's address (a neighbour's, in a decentralized run).
    """
    try:
        record = json.loads(store.get(key).decode())
        address, mac = str(record["address"]), str(record["mac"])
    except Exception as exc:  # noqa: BLE001 - no key within the store's timeout, or a value that is not ours
        raise PeerLost(f"no master address in the store ({type(exc).__name__})") from None
    if not hmac.compare_digest(mac, sign(token, address)):
        raise PeerLost("the master address in the store is not signed with this run's token: refusing to connect")
    host, port = address.rsplit("|", 1)
    while True:
        try:
            return socket.create_connection((host, int(port)), timeout=max(deadline - time.monotonic(), 0.1))
        except OSError as exc:
            if time.monotonic() > deadline:
                raise PeerLost(f"cannot connect to the master at {host}:{port} ({exc})") from None
            time.sleep(0.1)


def accept_links(
    listener: socket.socket,
    workers: int,
    capacity: int,
    peer_capacity_of: Any,
    token: str,
    deadline: float,
    settle: float,
    expected: set[int] | None = None,
) -> dict[int, SocketLink]:
    """Accept the workers' connections until every one has greeted or ``deadline``; one link per worker.

    A connection's first frame must be a HELLO whose JSON names a worker index
    not yet taken and carries the token's signature of that index; any other
    connection is closed and logged (a process that is not one of this run's
    workers, or a second claim on an index). ``expected``: only these indices
    may connect, and the wait ends once they all have (a node's neighbours).
    """
    links: dict[int, SocketLink] = {}
    wanted = set(range(workers)) if expected is None else set(expected)
    listener.setblocking(False)
    while not wanted <= links.keys() and time.monotonic() < deadline:
        ready, _, _ = select.select([listener], [], [], min(0.2, max(deadline - time.monotonic(), 0)))
        if not ready:
            continue
        try:
            sock, peer = listener.accept()
        except BlockingIOError:
            continue
        sock.setblocking(True)
        link = SocketLink(sock, capacity, 0, settle)
        w: Any = None
        try:
            first = link.receive(min(deadline, time.monotonic() + 10.0))
            why = check_frame(first, kind=Kind.HELLO, iteration=0, dtype=torch.uint8)
            hello = json.loads(first.blob().decode()) if why is None else {}
            w = hello.get("worker") if isinstance(hello, dict) else None
            if why is None and (not isinstance(w, int) or isinstance(w, bool) or w not in wanted):
                why = f"it claims to be worker {w!r:.20}"
            elif why is None and w in links:
                why = f"worker {w} has already connected"
            elif why is None and not hmac.compare_digest(str(hello.get("token", "")), sign(token, f"worker {w}")):
                why = "its greeting does not carry this run's token"
        except (PeerLost, Malformed, ValueError, UnicodeDecodeError) as exc:
            why = f"no valid greeting ({exc})"
        if why is not None:
            log.warning("dropped a connection from %s: %s", peer[0], why)
            link.close()
            continue
        link.peer_capacity = peer_capacity_of(w)
        link.first = dataclasses.replace(first, data=first.data.clone())
        links[w] = link
    return links


class Unconnected:
    """The link of a worker that never connected: every use is :class:`PeerLost`."""

    closed = "never connected"

    def post(self) -> None:
        raise PeerLost(self.closed)

    def receive(self, deadline: float) -> Frame:
        raise PeerLost(self.closed)

    def send(self, frame: Tensor) -> None:
        raise PeerLost(self.closed)

    def flush(self, deadline: float) -> None:
        return None

    def close(self) -> None:
        return None


def token_from_env() -> str:
    return os.environ.get(TOKEN_ENV, "")
