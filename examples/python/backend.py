"""A minimal wsgw business backend in Python (grpcio).

Serves gatewayapi.v1.BackendService.OnReceive and BatchBackendService.BatchOnReceive
(proto/gatewayapi/v1/gateway.proto): every upstream message gets the next message id. The sender
arrives as gRPC metadata (x-wsgw-user-id, x-wsgw-biz-id, x-wsgw-conn-id, x-wsgw-node-id,
x-wsgw-client-addr; comma-separated per request on a batch). With --push-back it pushes each
message back to its sender through the node's PushService (key "echo-<key>", same body), with
the node's backend token from WSGW_PUSH_TOKEN.

Run it with examples/python/run.sh, which installs grpcio into target/tools/pyvenv and
generates the stubs from proto/ first:

    examples/python/run.sh --listen 127.0.0.1:9100 --biz 9999 [--push-back 127.0.0.1:9004]
"""

import argparse
import itertools
import os
import sys
from concurrent import futures

import grpc

from gatewayapi.v1 import gateway_pb2 as pb
from gatewayapi.v1 import gateway_pb2_grpc as pb_grpc


class Backend(pb_grpc.BackendServiceServicer, pb_grpc.BatchBackendServiceServicer):
    def __init__(self, biz, push):
        self.biz = biz
        self.ids = itertools.count(1)
        self.push = push

    def _answer(self, request, user):
        if self.push is not None and user:
            self.push(request, int(user))
        return pb.OnReceiveResponse(msg_id=next(self.ids), biz_id=self.biz)

    @staticmethod
    def _users(context):
        meta = dict(context.invocation_metadata())
        return meta.get("x-wsgw-user-id", "").split(",")

    def OnReceive(self, request, context):
        return self._answer(request, self._users(context)[0])

    def BatchOnReceive(self, request, context):
        users = self._users(context)
        users += [""] * (len(request.reqs) - len(users))
        return pb.BatchOnReceiveResponse(
            res=[self._answer(r, u) for r, u in zip(request.reqs, users)]
        )


def pusher(node, token, biz):
    """A function that pushes a message back to its sender through the node's PushService."""
    stub = pb_grpc.PushServiceStub(grpc.insecure_channel(node))
    metadata = [("authorization", f"Bearer {token}")] if token else []

    def push(request, user):
        msg = pb.PushMessage(key=f"echo-{request.key}", biz_id=biz, receiver_id=user, body=request.body)
        future = stub.Push.future(pb.PushRequest(msg=msg), metadata=metadata, timeout=5)
        future.add_done_callback(
            lambda f: f.exception() and print(f"push back failed: {f.exception()}", file=sys.stderr)
        )

    return push


def main():
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--listen", default="127.0.0.1:9100")
    args.add_argument("--biz", type=int, default=9999)
    args.add_argument("--push-back", metavar="NODE_GRPC_ADDR")
    a = args.parse_args()
    push = pusher(a.push_back, os.environ.get("WSGW_PUSH_TOKEN", ""), a.biz) if a.push_back else None
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    backend = Backend(a.biz, push)
    pb_grpc.add_BackendServiceServicer_to_server(backend, server)
    pb_grpc.add_BatchBackendServiceServicer_to_server(backend, server)
    server.add_insecure_port(a.listen)
    server.start()
    print(f"python backend for biz {a.biz} on {a.listen}", file=sys.stderr, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
