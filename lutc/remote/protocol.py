"""The runner wire protocol: length-prefixed JSON header + binary payload, HMAC-authenticated, size-bounded."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import struct
import time

# Frame:  prefix  = "LUTC" | version u8 | 0 u8 | 0 u16 | header_len u32 | payload_len u64   (20 bytes)
#         mac     = HMAC-SHA256(session_key, prefix | direction | seq u64 | header | payload)   (32 bytes)
#         header  = UTF-8 JSON object
#         payload = raw bytes (kernel objects, arrays)
#
# Handshake: the runner sends an unauthenticated hello with a random nonce; the client answers
# with its own nonce, authenticated with session_key = HMAC(token, "lutc-session" | both nonces);
# every later frame in either direction is authenticated with that key, a direction byte and a
# per-direction sequence number, so frames cannot be forged, replayed or reflected without the
# token. Traffic is not encrypted (see docs/targets.md: threat model).

PROTOCOL_VERSION = 1
MAGIC = b"LUTC"
_PREFIX = struct.Struct("!4sBBHIQ")
MAC_LEN = 32
MAX_HEADER = 64 << 10                # bytes of JSON header
MAX_HEADER_DEPTH = 32                # nesting levels of a JSON header
DEFAULT_MAX_PAYLOAD = 256 << 20      # bytes of binary payload per message
PREAUTH_MAX_HEADER = 4 << 10         # the client hello (before its MAC is checked): header bytes...
PREAUTH_MAX_PAYLOAD = 0              # ...and payload bytes
MIN_TOKEN_LEN = 16


class ProtocolError(ConnectionError):
    """A malformed, oversized or unauthenticated frame, or a peer speaking something else."""


class AuthenticationError(ProtocolError):
    """A frame whose MAC does not verify: the peer does not hold the shared token."""


def read_token(path) -> bytes:
    """The shared token from a file (surrounding whitespace ignored); at least 16 characters."""
    with open(path, "rb") as f:
        token = f.read().strip()
    if len(token) < MIN_TOKEN_LEN:
        raise ValueError(f"{path}: the runner token must be at least {MIN_TOKEN_LEN} characters "
                         "(create one with `lutc runner --new-token FILE`)")
    return token


def new_token_file(path) -> bytes:
    """Write a fresh random token (256 bits, hex) to `path`, readable by its owner only."""
    token = os.urandom(32).hex().encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(token + b"\n")
    return token


def session_key(token: bytes, server_nonce: bytes, client_nonce: bytes) -> bytes:
    return hmac.new(token, b"lutc-session" + server_nonce + client_nonce, hashlib.sha256).digest()


def _recv_exact(sock: socket.socket, n: int, deadline: float | None = None) -> bytes:
    """n bytes from sock; with `deadline` (time.monotonic()), socket.timeout once it passes, however
    the peer paces its bytes (the socket's own timeout still bounds each wait)."""
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    base = sock.gettimeout() if deadline is not None else None
    try:
        while got < n:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("deadline passed before the message was complete")
                sock.settimeout(left if base is None else min(left, base))
            k = sock.recv_into(view[got:], n - got)
            if k == 0:
                raise ProtocolError("connection closed by peer" + (f" after {got} of {n} bytes" if got else ""))
            got += k
    finally:
        if deadline is not None:
            sock.settimeout(base)
    return bytes(buf)


def _depth(obj) -> int:
    """Nesting depth of a parsed JSON value (iterative: never recurses)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_HEADER_DEPTH:
                stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


def parse_header(raw: bytes) -> dict:
    """A frame's JSON header -> dict; ProtocolError for anything else (bad UTF-8 or JSON, not an
    object, nested deeper than MAX_HEADER_DEPTH)."""
    try:
        header = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError("header is not UTF-8 JSON") from None
    except RecursionError:
        raise ProtocolError(f"header nested deeper than {MAX_HEADER_DEPTH} levels") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if _depth(header) > MAX_HEADER_DEPTH:
        raise ProtocolError(f"header nested deeper than {MAX_HEADER_DEPTH} levels")
    return header


class Channel:
    """One side of an authenticated connection: send(header, payload) and recv() -> (header, payload)."""

    def __init__(self, sock: socket.socket, is_server: bool, max_payload: int = DEFAULT_MAX_PAYLOAD):
        self.sock = sock
        self.max_payload = int(max_payload)
        self._send_dir, self._recv_dir = (b"S", b"C") if is_server else (b"C", b"S")
        self._key = None
        self._send_seq = self._recv_seq = 0

    def set_key(self, key: bytes):
        self._key = key

    def state(self) -> tuple:
        """(key, send seq, recv seq): what another process needs to continue this session."""
        return self._key, self._send_seq, self._recv_seq

    def restore(self, state: tuple):
        self._key, self._send_seq, self._recv_seq = state

    def _mac(self, direction, seq, prefix, header, payload):
        if self._key is None:
            return bytes(MAC_LEN)
        m = hmac.new(self._key, prefix + direction + struct.pack("!Q", seq), hashlib.sha256)
        m.update(header)
        m.update(payload)
        return m.digest()

    def send(self, header: dict, payload: bytes = b""):
        h = json.dumps(header, separators=(",", ":")).encode()
        if len(h) > MAX_HEADER:
            raise ProtocolError(f"header of {len(h)} bytes exceeds {MAX_HEADER}")
        if len(payload) > self.max_payload:
            raise ProtocolError(f"payload of {len(payload)} bytes exceeds the {self.max_payload}-byte limit")
        prefix = _PREFIX.pack(MAGIC, PROTOCOL_VERSION, 0, 0, len(h), len(payload))
        mac = self._mac(self._send_dir, self._send_seq, prefix, h, payload)
        self._send_seq += 1
        self.sock.sendall(prefix + mac + h)
        if payload:
            self.sock.sendall(payload)

    def recv(self, authenticated: bool = True, key_from_header=None, max_header: int | None = None,
             max_payload: int | None = None, deadline: float | None = None):
        """The next (header, payload). Sizes are checked before anything is allocated (against
        max_header/max_payload when given, e.g. the small pre-authentication limits); with
        `deadline` (time.monotonic()) the whole frame must arrive before it (socket.timeout);
        with `authenticated`, the MAC must verify (key_from_header(header) may derive the key first)."""
        max_header = MAX_HEADER if max_header is None else min(max_header, MAX_HEADER)
        max_payload = self.max_payload if max_payload is None else min(max_payload, self.max_payload)
        prefix = _recv_exact(self.sock, _PREFIX.size, deadline)
        magic, version, _, _, hlen, plen = _PREFIX.unpack(prefix)
        if magic != MAGIC:
            raise ProtocolError("not a lutc runner peer (bad magic)")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {version}, this lutc speaks {PROTOCOL_VERSION}")
        if hlen > max_header:
            raise ProtocolError(f"header of {hlen} bytes exceeds {max_header}")
        if plen > max_payload:
            raise ProtocolError(f"payload of {plen} bytes exceeds the {max_payload}-byte limit")
        mac = _recv_exact(self.sock, MAC_LEN, deadline)
        raw = _recv_exact(self.sock, hlen, deadline)
        payload = _recv_exact(self.sock, plen, deadline) if plen else b""
        header = parse_header(raw)
        if authenticated:
            if key_from_header is not None:
                self._key = key_from_header(header)
            if self._key is None:
                raise AuthenticationError("no session key")
            want = self._mac(self._recv_dir, self._recv_seq, prefix, raw, payload)
            if not hmac.compare_digest(want, mac):
                raise AuthenticationError("message authentication failed (wrong token?)")
        self._recv_seq += 1
        return header, payload


def split_sections(payload: bytes, sections, what: str) -> dict:
    """Cut payload into named parts given [[name, nbytes], ...]; sizes must add up exactly."""
    if not isinstance(sections, list):
        raise ProtocolError(f"{what}: 'sections' must be a list")
    out, off = {}, 0
    for item in sections:
        if (not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], str)
                or not isinstance(item[1], int) or isinstance(item[1], bool) or item[1] < 0):
            raise ProtocolError(f"{what}: bad section {item!r}")
        out[item[0]] = payload[off:off + item[1]]
        off += item[1]
    if off != len(payload):
        raise ProtocolError(f"{what}: sections cover {off} bytes, payload has {len(payload)}")
    return out


def parse_address(text: str, default_host: str = "127.0.0.1") -> tuple:
    """'HOST:PORT', ':PORT' or 'PORT' -> (host, port); the host defaults to loopback."""
    host, sep, port = str(text).rpartition(":")
    if not sep:
        host = ""
    host = host.strip("[]") or default_host
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT, got {text!r}") from None
    if not 0 <= p < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return host, p
