"""An unmodified http.client GET; prints status and body."""
import http.client
import sys

host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPConnection(host, port, timeout=10)
c.request("GET", path)
r = c.getresponse()
print(r.status, r.read().decode().strip())
