"""Chat requests one after another, each naming its own model (argv[3] + "-" + n), each on a
new connection, until the file argv[2] exists (at most 60 s) or argv[4] refusals in a row.
argv: host:port stop_file model_prefix max_refusals. Prints one JSON line per request:
{"model": ..., "status": ..., "code": ...}; status null when no response came."""
import http.client
import json
import os
import sys
import time

addr, stop, prefix, max_refused = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host, port = addr.rsplit(":", 1)
n, refused = 0, 0
deadline = time.monotonic() + 60
while not os.path.exists(stop) and time.monotonic() < deadline and refused < max_refused:
    n += 1
    model = f"{prefix}-{n}"
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}]})
    out = {"model": model, "status": None, "code": None}
    try:
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        c.request("POST", "/v1/chat/completions", body=body,
                  headers={"Content-Type": "application/json", "Authorization": "Bearer sk-canary-loop"})
        r = c.getresponse()
        data = r.read()
        out["status"] = r.status
        if r.status != 200:
            try:
                out["code"] = json.loads(data)["error"]["code"]
                out["message"] = json.loads(data)["error"]["message"]
            except Exception:
                pass
        c.close()
    except Exception as e:
        out["error"] = str(e)
        time.sleep(0.01)
    refused = refused + 1 if out["status"] == 503 else 0
    print(json.dumps(out), flush=True)
