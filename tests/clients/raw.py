"""A raw TCP client driven by a plan, for hostile and slow clients.

argv[1]: host, argv[2]: port, argv[3]: JSON list of steps:
  ["send", "text"]        send these bytes (latin-1)
  ["sleep", seconds]
  ["read", seconds]       read until the peer closes or `seconds` pass
  ["close"]               close now (abandon whatever is in flight)
  ["shut"]                half-close: send FIN, keep reading
Prints one JSON object: every read's data, whether the peer closed (EOF or reset) and when.
"""
import json
import socket
import sys
import time

host, port, plan = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
out = {"reads": [], "closed": False, "closed_after": None}
t0 = time.monotonic()
try:
    s = socket.create_connection((host, port), timeout=10)
except OSError as e:
    # Refused or reset before the handshake finished: that is an answer too.
    out.update(closed=True, closed_after=0.0, connect_error=str(e), reads=[""])
    print(json.dumps(out))
    sys.exit(0)
for step in plan:
    kind = step[0]
    if kind == "send":
        try:
            s.sendall(step[1].encode("latin-1"))
        except OSError as e:
            out["send_error"] = str(e)
    elif kind == "sleep":
        time.sleep(step[1])
    elif kind == "shut":
        s.shutdown(socket.SHUT_WR)
    elif kind == "close":
        s.close()
        break
    elif kind == "read":
        deadline = time.monotonic() + step[1]
        data = b""
        while time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                c = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                c = b""
            if not c:
                out["closed"] = True
                out["closed_after"] = time.monotonic() - t0
                break
            data += c
        out["reads"].append(data.decode("latin-1"))
        if out["closed"]:
            break
print(json.dumps(out))
