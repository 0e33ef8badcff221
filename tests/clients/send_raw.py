"""Sends stdin to argv[1]:argv[2] and prints whatever comes back until the peer closes,
resets, or argv[3] seconds pass in silence."""
import socket
import sys

s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
s.sendall(sys.stdin.buffer.read())
out = b""
try:
    while True:
        b = s.recv(65536)
        if not b:
            break
        out += b
except (socket.timeout, ConnectionResetError):
    pass
sys.stdout.buffer.write(out)
