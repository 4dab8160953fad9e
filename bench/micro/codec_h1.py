"""Micro-benchmark of the HTTP/1.1 codec: ns per operation for the hot-path calls.

Run: `.venv/bin/python -m bench.micro.codec_h1` (`--number N` to change the loop).
Measures parsing a typical 8-header GET, a keep-alive response head with a small
body, encoding both heads, and, for scale, httptools alone with a no-op callback.
Numbers are per call, best of five repeats.
"""

from __future__ import annotations

import argparse
import timeit

import httptools

from proxy.codec.h1 import (
    RequestReader,
    ResponseReader,
    encode_request_head,
    encode_response_head,
)

GET = (
    b"GET /api/v1/users/12345?fields=name,email HTTP/1.1\r\n"
    b"Host: users.service.internal\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) bench/1.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Accept-Language: en-US,en;q=0.9\r\n"
    b"Connection: keep-alive\r\n"
    b"X-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n"
    b"Cookie: session=abcdef0123456789\r\n"
    b"\r\n"
)

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 17\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Server: backend\r\n"
    b"\r\n"
    b'{"name": "hello"}'
)


def _ns(stmt: object, number: int) -> float:
    best = min(timeit.repeat(stmt, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--number", type=int, default=100_000)
    n = ap.parse_args().number

    reader = RequestReader()  # one keep-alive connection: the reader is reused
    feed_request = reader.feed

    def parse_get() -> None:
        feed_request(GET)

    response_reader = ResponseReader()
    expect = response_reader.expect
    feed_response = response_reader.feed

    def parse_response() -> None:
        expect(b"GET")
        feed_response(RESPONSE)

    head = RequestReader().feed(GET)[0]
    headers = head.headers  # type: ignore[union-attr]
    rheaders = ResponseReader()
    rheaders.expect(b"GET")
    resp_headers = rheaders.feed(RESPONSE)[0].headers  # type: ignore[union-attr]

    def encode_get() -> None:
        encode_request_head(b"GET", b"/api/v1/users/12345?fields=name,email", headers)

    def encode_response() -> None:
        encode_response_head(200, b"OK", resp_headers)

    def new_reader() -> None:
        RequestReader()

    class _Null:
        """httptools with a Python on_header and nothing else: the floor we build on."""

        def on_header(self, name: bytes, value: bytes) -> None:
            pass

    raw = httptools.HttpRequestParser(_Null())

    def httptools_floor() -> None:
        raw.feed_data(GET)

    for name, fn in (
        ("parse GET, 8 headers", parse_get),
        ("parse response head + 17 B body", parse_response),
        ("encode GET head", encode_get),
        ("encode response head", encode_response),
        ("new RequestReader", new_reader),
        ("(httptools alone, no-op on_header)", httptools_floor),
    ):
        print(f"{name:34s} {_ns(fn, n):8.0f} ns/op")


if __name__ == "__main__":
    main()
