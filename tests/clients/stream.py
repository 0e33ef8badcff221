"""Stream clients for the L4 relay tests. Prints one JSON line.

  half_close_client HOST PORT N  send N bytes, wait for a line on stdin, half-close, read
                                 the reply to EOF
  half_close_server HOST PORT N  read the server's greeting to its EOF, then send N bytes,
                                 half-close and read to EOF
  read_all HOST PORT             read to EOF or error
  idle HOST PORT                 connect, print "connected", then neither read nor write
"""
import json
import socket
import sys
import time

mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.create_connection((host, port), timeout=60)


def read_to_eof():
    out = bytearray()
    while True:
        b = s.recv(1 << 20)
        if not b:
            return bytes(out)
        out += b


if mode == "half_close_client":
    s.sendall(b"x" * int(sys.argv[4]))
    # The test says when: the kernel relay only pairs established sockets, so a FIN before
    # the agent has set the connection up would send it down the splice path.
    sys.stdin.readline()
    s.shutdown(socket.SHUT_WR)
    print(json.dumps({"reply": read_to_eof().decode()}))
elif mode == "half_close_server":
    greeting = read_to_eof().decode()
    s.sendall(b"y" * int(sys.argv[4]))
    s.shutdown(socket.SHUT_WR)
    print(json.dumps({"greeting": greeting, "after": read_to_eof().decode()}))
elif mode == "read_all":
    n, error = 0, None
    try:
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            n += len(b)
    except OSError as e:
        error = repr(e)
    print(json.dumps({"received": n, "error": error}))
elif mode == "idle":
    print("connected", flush=True)
    time.sleep(120)
