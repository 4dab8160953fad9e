"""A stand-in AdService for the feature-branch seed (grpcio, no generated code).

    python docs/examples/boutique/ads.py serve adservice 9555            # answers its name
    python docs/examples/boutique/ads.py call 127.0.0.1:4142 [--userid ID]

`call` makes one hipstershop.AdService/GetAds call through the proxy, with the
authority `adservice` (the VirtualService's host, the name the h2 router routes by)
and, with --userid, the `userid` metadata the VirtualService matches; it prints the
name of the service that answered.
"""

from __future__ import annotations

import argparse
import sys
from concurrent import futures

import grpc

METHOD = "/hipstershop.AdService/GetAds"


def _same(b: bytes) -> bytes:
    return b


def serve(name: str, port: int) -> None:
    def get_ads(request: bytes, context: grpc.ServicerContext) -> bytes:
        return name.encode()

    handler = grpc.method_handlers_generic_handler(
        "hipstershop.AdService",
        {"GetAds": grpc.unary_unary_rpc_method_handler(get_ads, request_deserializer=_same, response_serializer=_same)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(f"ready {bound}", flush=True)
    server.wait_for_termination()


def call(target: str, userid: str | None) -> str:
    options = [("grpc.default_authority", "adservice"), ("grpc.enable_http_proxy", 0)]
    with grpc.insecure_channel(target, options=options) as ch:
        get_ads = ch.unary_unary(METHOD, request_serializer=_same, response_deserializer=_same)
        metadata = [("userid", userid)] if userid else []
        return bytes(get_ads(b"", metadata=metadata, timeout=10)).decode()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="ads.py")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("name")
    s.add_argument("port", type=int)
    c = sub.add_parser("call")
    c.add_argument("target")
    c.add_argument("--userid")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        serve(args.name, args.port)
    else:
        print(call(args.target, args.userid))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
