"""Opens N connections at once to an echo server, each sending a unique message, holds them
all open until every one has connected, then checks each echo. Prints JSON counts."""
import json
import socket
import sys
import threading

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# Mode "echo-first": half-close only after the echo has come back (the connection is then
# fully open while the agent sets it up). "fin-at-once" (the default): half-close right after
# sending, which may reach the agent before it has set the connection up.
mode = sys.argv[4] if len(sys.argv) > 4 else "fin-at-once"
if mode not in ("echo-first", "fin-at-once"):
    sys.exit(f"unknown mode {mode!r}")
echo_first = mode == "echo-first"
barrier = threading.Barrier(n)
ok = []
errors = []
lock = threading.Lock()


def one(i):
    try:
        s = socket.create_connection((host, port), timeout=30)
        barrier.wait(timeout=60)
        msg = f"connection {i} says hello\n".encode()
        got_head = b""
        s.sendall(msg)
        if echo_first:
            # Keep the connection fully open until the echo is back.
            head = b""
            while len(head) < len(msg):
                b = s.recv(4096)
                if not b:
                    break
                head += b
            got_head = head
        s.shutdown(socket.SHUT_WR)
        got = got_head if echo_first else b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            got += b
        with lock:
            (ok if got == msg else errors).append(i if got == msg else f"{i}: got {got!r}")
        s.close()
    except Exception as e:  # noqa: BLE001 - report every failure
        with lock:
            errors.append(f"{i}: {e!r}")
        try:
            barrier.abort()
        except Exception:  # noqa: BLE001
            pass


threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"ok": len(ok), "errors": errors[:10], "error_count": len(errors)}))
