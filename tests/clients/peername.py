"""Connects to HOST:PORT and prints what getpeername() says, as JSON [host, port]."""
import json
import socket
import sys

host, port = sys.argv[1], int(sys.argv[2])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
s.settimeout(10)
s.connect((host, port))
print(json.dumps(list(s.getpeername()[:2])))
