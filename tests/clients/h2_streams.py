"""Opens N HTTP/2 streams at once on one connection (prior knowledge; frames and HPACK
literals by hand, as no h2 library is assumed) and reports how each ended.

argv[1]: host, argv[2]: port, argv[3]: number of streams, argv[4]: path (GET).
The client ACKs the server's SETTINGS first, so a refusal cannot be blamed on a client that
ignored them, then sends every request before reading any answer.
Prints one JSON object:
  completed: {stream id: response body} for streams that ended normally
  reset:     {stream id: RST_STREAM error code} (7 = REFUSED_STREAM)
  goaway:    the GOAWAY error code, or null
  closed:    whether the server closed the connection
  max_concurrent_streams: what the server's SETTINGS advertised, or null
"""
import json
import socket
import struct
import sys
import time

host, port, count, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
END_STREAM, END_HEADERS, ACK = 1, 4, 1
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7


def frame(t, flags, sid, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([t, flags]) + struct.pack(">I", sid) + payload


def lit(name, value):
    # Literal header field without indexing, new name; both lengths below 127.
    name, value = name.encode("latin-1"), value.encode("latin-1")
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


s = socket.create_connection((host, port), timeout=10)
s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(SETTINGS, 0, 0, b""))

out = {"completed": {}, "reset": {}, "goaway": None, "closed": False, "max_concurrent_streams": None}
buf = b""


def frames():
    """Yields whole frames until the peer closes or 10 s pass without one."""
    global buf
    while True:
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            t, flags = buf[3], buf[4]
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
            payload = buf[9 : 9 + n]
            buf = buf[9 + n :]
            yield t, flags, sid, payload
        try:
            c = s.recv(65536)
        except (socket.timeout, OSError):
            c = b""
        if not c:
            out["closed"] = True
            return
        buf += c


def on_settings(flags, payload):
    if flags & ACK:
        return
    for i in range(0, len(payload) - len(payload) % 6, 6):
        key, value = struct.unpack(">HI", payload[i : i + 6])
        if key == 3:
            out["max_concurrent_streams"] = value
    s.sendall(frame(SETTINGS, ACK, 0, b""))


reader = frames()
# The server's SETTINGS come first; ACK them before opening any stream.
for t, flags, sid, payload in reader:
    if t == SETTINGS and not flags & ACK:
        on_settings(flags, payload)
        break

ids = [1 + 2 * i for i in range(count)]
block = lit(":method", "GET") + lit(":scheme", "http") + lit(":path", path) + lit(":authority", "models")
s.sendall(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, sid, block) for sid in ids))

bodies = {sid: b"" for sid in ids}
open_ids = set(ids)
deadline = time.monotonic() + 20
for t, flags, sid, payload in reader:
    if t == SETTINGS:
        on_settings(flags, payload)
    elif t == PING and not flags & ACK:
        s.sendall(frame(PING, ACK, 0, payload))
    elif t == GOAWAY:
        out["goaway"] = int.from_bytes(payload[4:8], "big")
    elif t == RST_STREAM and sid in open_ids:
        out["reset"][sid] = int.from_bytes(payload[:4], "big")
        open_ids.discard(sid)
    elif t in (HEADERS, DATA) and sid in open_ids:
        if t == DATA:
            bodies[sid] += payload
            if payload:
                # Give the connection's window back so a long body cannot stall.
                inc = struct.pack(">I", len(payload))
                stream_too = b"" if flags & END_STREAM else frame(8, 0, sid, inc)
                s.sendall(frame(8, 0, 0, inc) + stream_too)
        if flags & END_STREAM:
            out["completed"][sid] = bodies[sid].decode("latin-1")
            open_ids.discard(sid)
    if not open_ids or time.monotonic() > deadline:
        break
s.close()
print(json.dumps(out))
