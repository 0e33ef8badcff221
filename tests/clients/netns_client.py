"""Runs inside a fresh network namespace (`unshare --net`), in the test cgroup.

Brings the namespace's lo up, starts a "sidecar" HTTP server on 127.0.0.1:SIDECAR_PORT that
answers with TAG (the upstream the agent must reach from inside this namespace), and a "direct"
server on VIP:VPORT itself that answers "DIRECT": a connection that bypassed the agent lands
there. Then runs one action:

  get PATH               an unmodified http.client GET to VIP:VPORT, retried while connect()
                         fails with EPERM (the hook refusing until the namespace is ready);
                         prints JSON {errors: {errno: n}, status, body}
  hold LOCAL_PORT FILE   binds 127.0.0.1:LOCAL_PORT, connects to VIP:VPORT (same retry),
                         prints "connected", waits until FILE exists, then sends a GET and
                         prints JSON {errors, status_line, body}
  gets N                 N GETs of / on new connections, 50 ms apart, each connect retried
                         as above; prints JSON {errors, froms: [the answering server's tag]}
  runraw CMD...          runs CMD (curl, python) as it is: its first connection may be refused
  run CMD...             first connects once (retrying as above) so the namespace is ready,
                         then runs CMD (curl, python) and passes its output and exit code on

NETNS_CLIENT_DEADLINE (seconds, default 10) bounds the EPERM retries. With NETNS_SIDECAR_TLS
set to "CERT_FILE:KEY_FILE" the sidecar speaks HTTPS with that certificate (the agent then
originates TLS from inside the namespace).
"""
import errno
import http.client
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time


def serve(bind, port, tag):
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def answer(self):
            n = int(self.headers.get("content-length") or 0)
            if n:
                self.rfile.read(n)
            body = json.dumps(
                {
                    "from": tag,
                    "path": self.path,
                    "id": "x",
                    "object": "chat.completion",
                    "model": "m",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": tag},
                            "finish_reason": "stop",
                        }
                    ],
                }
            ).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = answer
        do_POST = answer

        def log_message(self, *a):
            pass

    class Server(http.server.ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET

    srv = Server((bind, port), H)
    tls = os.environ.get("NETNS_SIDECAR_TLS") if tag != "DIRECT" else None
    if tls:
        cert, key = tls.split(":", 1)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def connect(vip, vport, local_port=None):
    """Connects, retrying EPERM (refused by the hook while the namespace is prepared)."""
    errors = {}
    deadline = time.time() + float(os.environ.get("NETNS_CLIENT_DEADLINE", "10"))
    while True:
        s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET)
        if local_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", local_port))
        try:
            s.connect((vip, vport))
            return s, errors
        except OSError as e:
            name = errno.errorcode.get(e.errno, str(e.errno))
            errors[name] = errors.get(name, 0) + 1
            s.close()
            if e.errno != errno.EPERM or time.time() > deadline:
                raise SystemExit(json.dumps({"errors": errors, "failed": str(e)}))
            time.sleep(0.005)


def main():
    sidecar_port, tag, vip, vport = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    action, rest = sys.argv[5], sys.argv[6:]
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    serve("127.0.0.1", sidecar_port, tag)
    serve(vip, vport, "DIRECT")
    if action == "get":
        s, errors = connect(vip, vport)
        c = http.client.HTTPConnection(vip, vport, timeout=10)
        c.sock = s
        c.request("GET", rest[0])
        r = c.getresponse()
        print(json.dumps({"errors": errors, "status": r.status, "body": r.read().decode()}))
    elif action == "hold":
        s, errors = connect(vip, vport, int(rest[0]))
        print("connected", flush=True)
        while not os.path.exists(rest[1]):
            time.sleep(0.01)
        s.sendall(f"GET /held HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n".encode())
        s.settimeout(10)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.decode().partition("\r\n\r\n")
        print(json.dumps({"errors": errors, "status_line": head.split("\r\n")[0], "body": body}))
    elif action == "gets":
        errors, froms = {}, []
        for _ in range(int(rest[0])):
            s, e = connect(vip, vport)
            for k, v in e.items():
                errors[k] = errors.get(k, 0) + v
            c = http.client.HTTPConnection(vip, vport, timeout=10)
            c.sock = s
            c.request("GET", "/")
            froms.append(json.loads(c.getresponse().read())["from"])
            c.close()
            time.sleep(0.05)
        print(json.dumps({"errors": errors, "froms": froms}))
    elif action == "runraw":
        r = subprocess.run(rest, capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        sys.exit(r.returncode)
    elif action == "run":
        s, errors = connect(vip, vport)
        s.close()
        sys.stderr.write(json.dumps({"errors": errors}) + "\n")
        r = subprocess.run(rest, capture_output=True, text=True)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        sys.exit(r.returncode)


main()
