"""Sends N bytes of seeded pseudo-random data to an echo server while reading the echo back,
half-closes, reads to EOF, and prints JSON with both SHA-256 digests and byte counts, and the
first socket error if the connection failed (null when it ended cleanly)."""
import hashlib
import json
import random
import socket
import sys
import threading

host, port, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(120)
s.connect((host, port))

sent_hash = hashlib.sha256()
recv_hash = hashlib.sha256()
received = 0
error = None


def reader():
    global received, error
    try:
        while True:
            b = s.recv(1 << 20)
            if not b:
                return
            received += len(b)
            recv_hash.update(b)
    except OSError as e:
        error = error or repr(e)


t = threading.Thread(target=reader)
t.start()
rng = random.Random(1234)
left = total
try:
    while left:
        n = min(left, 1 << 20)
        chunk = rng.randbytes(n)
        sent_hash.update(chunk)
        s.sendall(chunk)
        left -= n
    s.shutdown(socket.SHUT_WR)
except OSError as e:
    error = error or repr(e)
t.join()
print(json.dumps({"sent": total - left, "received": received, "error": error,
                  "sent_sha256": sent_hash.hexdigest(), "recv_sha256": recv_hash.hexdigest()}))
