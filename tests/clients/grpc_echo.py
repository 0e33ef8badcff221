"""A real gRPC peer (grpcio) over cleartext HTTP/2, with no generated code.
serve [ADDR]:     runs a server whose every unary method echoes the request bytes on ADDR
                  (default 127.0.0.1:0); prints its port.
call ADDR METHOD: calls METHOD with a fixed payload; prints JSON {ok, echoed} or {ok, code, details}."""
import json
import sys
from concurrent import futures

import grpc

PAYLOAD = b"\x0a\x05hello-from-grpc"


class Echo(grpc.GenericRpcHandler):
    def service(self, handler_call_details):
        return grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: req, request_deserializer=None, response_serializer=None)


if sys.argv[1] == "serve":
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((Echo(),))
    port = server.add_insecure_port(sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()
else:
    addr, method = sys.argv[2], sys.argv[3]
    with grpc.insecure_channel(addr) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            resp = call(PAYLOAD, timeout=10)
            print(json.dumps({"ok": True, "echoed": resp == PAYLOAD}))
        except grpc.RpcError as e:
            print(json.dumps({"ok": False, "code": e.code().name, "details": e.details()}))
