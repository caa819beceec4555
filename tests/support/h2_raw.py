"""A raw HTTP/2 client for hostile gRPC tests: frames written as an attacker would, not as a
well-behaved library allows.

Why not `h2.connection.H2Connection`: it enforces the peer's limits on *our* side (it refuses to
open a stream past the server's MAX_CONCURRENT_STREAMS, for example), which is exactly what an
attacker does not do. Frames are built with `hyperframe` and headers with `hpack` (the pieces h2
itself is made of); what the server sends is parsed into per-stream results, and its SETTINGS and
PINGs are acknowledged like a real client would, so the server has no protocol reason to close us.
Only ever connects to loopback.
"""

from __future__ import annotations

import socket
import struct
import time
from dataclasses import dataclass, field

import hpack
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CANCEL = 0x8          # RST_STREAM error code a client uses to cancel a stream
REFUSED_STREAM = 0x7
FRAME_HEADER = 9


def grpc_frame(message: bytes, compressed: bool = False) -> bytes:
    """One length-prefixed gRPC message."""
    return struct.pack(">?I", compressed, len(message)) + message


@dataclass
class StreamResult:
    """What the server did with one stream."""

    headers: list[tuple[bytes, bytes]] = field(default_factory=list)   # initial headers and trailers
    data: bytearray = field(default_factory=bytearray)
    reset: int | None = None        # the server's RST_STREAM error code
    ended: bool = False             # END_STREAM seen (trailers) or reset

    @property
    def grpc_status(self) -> int | None:
        value = dict(self.headers).get(b"grpc-status")
        return None if value is None else int(value)

    @property
    def grpc_message(self) -> str:
        return dict(self.headers).get(b"grpc-message", b"").decode("latin-1")

    def messages(self) -> list[bytes]:
        """The gRPC messages in the DATA received so far."""
        out, view = [], bytes(self.data)
        while len(view) >= 5:
            size = struct.unpack(">I", view[1:5])[0]
            if len(view) < 5 + size:
                break
            out.append(view[5:5 + size])
            view = view[5 + size:]
        return out


class RawH2:
    """One HTTP/2 connection to a loopback gRPC server, driven frame by frame."""

    def __init__(self, port: int, host: str = "127.0.0.1", initial_window: int | None = None,
                 timeout: float = 10.0) -> None:
        assert host.startswith("127."), "hostile tests only ever target loopback"
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.authority = f"{host}:{port}".encode()
        self._encoder = hpack.Encoder()
        self._decoder = hpack.Decoder()
        self._decoder.max_allowed_table_size = 65536
        self._buffer = b""
        self._header_block: tuple[int, bytes, bool] | None = None
        self.next_stream_id = 1
        self.streams: dict[int, StreamResult] = {}
        self.server_settings: dict[int, int] = {}
        self.goaway: int | None = None    # the server's GOAWAY error code
        # flow control of what we send: the connection's window (key 0) and each stream's
        self.send_windows: dict[int, int] = {0: 65535}
        self.closed = False
        settings = SettingsFrame(0)
        if initial_window is not None:
            settings.settings[SettingsFrame.INITIAL_WINDOW_SIZE] = initial_window
        self.sock.sendall(PREFACE + settings.serialize())

    # -- writing ---------------------------------------------------------------------------
    def request_headers(self, path: str, metadata: list[tuple[bytes, bytes]] = (),
                        content_type: bytes = b"application/grpc") -> list[tuple[bytes, bytes]]:
        return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path.encode()),
                (b":authority", self.authority), (b"content-type", content_type), (b"te", b"trailers"),
                *metadata]

    def headers_frame(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> bytes:
        frame = HeadersFrame(stream_id)
        frame.data = self._encoder.encode(headers)
        frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    def data_frame(self, stream_id: int, data: bytes, end_stream: bool = False) -> bytes:
        frame = DataFrame(stream_id)
        frame.data = data
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame.serialize()

    @staticmethod
    def rst_frame(stream_id: int, code: int = CANCEL) -> bytes:
        frame = RstStreamFrame(stream_id)
        frame.error_code = code
        return frame.serialize()

    def new_stream(self) -> int:
        stream_id = self.next_stream_id
        self.next_stream_id += 2
        self.streams[stream_id] = StreamResult()
        self.send_windows[stream_id] = self.server_settings.get(SettingsFrame.INITIAL_WINDOW_SIZE, 65535)
        return stream_id

    def send_within_window(self, stream_id: int, data: bytes) -> int:
        """Sends as much of `data` as the server's flow-control windows allow, as a well-behaved
        peer must (a flood past them is a protocol error the server resets the stream for);
        returns how many bytes went."""
        allowed = min(len(data), self.send_windows[0], self.send_windows.get(stream_id, 0))
        sent = 0
        while sent < allowed:
            size = min(allowed - sent, 16384)
            if not self.send(self.data_frame(stream_id, data[sent:sent + size])):
                break
            sent += size
        self.send_windows[0] -= sent
        self.send_windows[stream_id] -= sent
        return sent

    def open_call(self, path: str, metadata: list[tuple[bytes, bytes]] = (), message: bytes | None = None,
                  end_stream: bool = True, content_type: bytes = b"application/grpc") -> int:
        """Starts a call: HEADERS, then (optionally) one message; returns the stream id."""
        stream_id = self.new_stream()
        out = self.headers_frame(stream_id, self.request_headers(path, metadata, content_type),
                                 end_stream=message is None and end_stream)
        if message is not None:
            out += self.data_frame(stream_id, message, end_stream=end_stream)
        self.send(out)
        return stream_id

    def send(self, data: bytes) -> bool:
        """False once the server closed the connection."""
        if self.closed:
            return False
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            self.closed = True
            return False

    # -- reading ---------------------------------------------------------------------------
    def pump(self, duration: float = 0.0) -> None:
        """Reads and handles whatever the server sends for up to `duration` seconds (at least once)."""
        end = time.monotonic() + duration
        while not self.closed:
            remaining = end - time.monotonic()
            self.sock.settimeout(max(0.001, remaining))
            try:
                chunk = self.sock.recv(1 << 20)
            except (socket.timeout, BlockingIOError):
                chunk = None
            except OSError:
                self.closed = True
                return
            if chunk == b"":
                self.closed = True
                return
            if chunk:
                self._buffer += chunk
                self._parse()
            if remaining <= 0:
                return

    def wait(self, condition, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.closed or time.monotonic() > deadline:
                return bool(condition())
            self.pump(0.05)
        return True

    def _parse(self) -> None:
        while len(self._buffer) >= FRAME_HEADER:
            frame, length = Frame.parse_frame_header(memoryview(self._buffer[:FRAME_HEADER]))
            if len(self._buffer) < FRAME_HEADER + length:
                return
            frame.parse_body(memoryview(self._buffer[FRAME_HEADER:FRAME_HEADER + length]))
            self._buffer = self._buffer[FRAME_HEADER + length:]
            self._handle(frame)

    def _handle(self, frame: Frame) -> None:
        kind = type(frame)
        if kind is SettingsFrame:
            if "ACK" not in frame.flags:
                initial = frame.settings.get(SettingsFrame.INITIAL_WINDOW_SIZE)
                if initial is not None:  # applies to open streams too (RFC 9113 §6.9.2)
                    old = self.server_settings.get(SettingsFrame.INITIAL_WINDOW_SIZE, 65535)
                    for stream_id in self.send_windows:
                        if stream_id:
                            self.send_windows[stream_id] += initial - old
                self.server_settings.update(frame.settings)
                ack = SettingsFrame(0)
                ack.flags.add("ACK")
                self.send(ack.serialize())
        elif kind is PingFrame:
            if "ACK" not in frame.flags:
                pong = PingFrame(0)
                pong.flags.add("ACK")
                pong.opaque_data = frame.opaque_data
                self.send(pong.serialize())
        elif kind is GoAwayFrame:
            self.goaway = frame.error_code
        elif kind is HeadersFrame:
            self._header_block = (frame.stream_id, bytes(frame.data), "END_STREAM" in frame.flags)
            if "END_HEADERS" in frame.flags:
                self._end_header_block()
        elif kind is ContinuationFrame and self._header_block is not None:
            stream_id, block, end = self._header_block
            self._header_block = (stream_id, block + bytes(frame.data), end)
            if "END_HEADERS" in frame.flags:
                self._end_header_block()
        elif kind is DataFrame:
            result = self.streams.setdefault(frame.stream_id, StreamResult())
            result.data += frame.data
            if "END_STREAM" in frame.flags:
                result.ended = True
            if frame.flow_controlled_length:  # give the connection window back (streams: see reader)
                self.send(self._window_update(0, frame.flow_controlled_length)
                          + self._window_update(frame.stream_id, frame.flow_controlled_length))
        elif kind is RstStreamFrame:
            result = self.streams.setdefault(frame.stream_id, StreamResult())
            result.reset, result.ended = frame.error_code, True
        elif kind is WindowUpdateFrame:
            if frame.stream_id in self.send_windows:
                self.send_windows[frame.stream_id] += frame.window_increment

    def _end_header_block(self) -> None:
        stream_id, block, end = self._header_block
        self._header_block = None
        headers = [(bytes(k), bytes(v)) for k, v in self._decoder.decode(block, raw=True)]
        result = self.streams.setdefault(stream_id, StreamResult())
        result.headers += headers
        if end:
            result.ended = True

    @staticmethod
    def _window_update(stream_id: int, increment: int) -> bytes:
        frame = WindowUpdateFrame(stream_id)
        frame.window_increment = increment
        return frame.serialize()

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass
