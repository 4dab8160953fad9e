"""The attempt on its own, with a fake opener and owner: waiting for a pending address set
(bindingTimeoutMs), holding a deferred response for its trailers, requeues."""

from __future__ import annotations

import asyncio
from typing import Any

from config.policy import ClassifierConfig
from dtab import Bound, Path
from proxy.codec.h1 import Body, EndOfMessage, ResponseHead
from proxy.discovery.endpoints import EndpointSet
from proxy.errors import NoRoute
from proxy.upstream.attempt import Attempt
from proxy.upstream.budget import RetryBudget
from proxy.upstream.classify import make_classifier
from proxy.upstream.endpoint import Client
from proxy.upstream.policy import RequestPolicy


class Owner:
    def __init__(self) -> None:
        self.events: list[Any] = []
        self.failed: list[Exception] = []
        self.done = asyncio.Event()

    def on_upstream_event(self, ev: Any) -> None:
        self.events.append(ev)
        if isinstance(ev, EndOfMessage):
            self.done.set()

    def upstream_failed(self, exc: Any) -> None:
        self.failed.append(exc)
        self.done.set()

    def flush_writes(self) -> None:
        pass

    def pause_client_reads(self) -> None:
        pass

    def resume_client_reads(self) -> None:
        pass


class Handle:
    def __init__(self, owner: Any) -> None:
        self.owner = owner
        self.sent: list[Any] = []
        self.cancelled = False
        self.discarded: bool | None = None

    def send_body(self, data: bytes) -> None:
        self.sent.append(data)

    def send_end(self, trailers: Any = None) -> None:
        self.sent.append("end")

    def cancel(self) -> None:
        self.cancelled = True

    def discard(self, complete: bool) -> None:
        self.discarded = complete

    def set_owner(self, owner: Any) -> None:
        self.owner = owner

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Opener:
    def __init__(self) -> None:
        self.handles: list[Handle] = []

    def __call__(self, ep: Any, owner: Any, method: bytes, target: bytes, headers: Any, body_mode: int,
                 loop: Any, fresh: bool = False) -> Handle:  # fmt: skip
        h = Handle(owner)
        self.handles.append(h)
        return h


def _client(es: Any) -> Client:
    return Client(Bound(Path.of("#", "io.l5d.test", "web"), addr=es))


def test_a_pending_address_set_is_awaited_then_tried(run: Any) -> None:
    async def main() -> None:
        es = EndpointSet()  # pending: the namer has not answered yet
        owner, opener = Owner(), Opener()
        a = Attempt(owner, _client(es), RequestPolicy(binding_timeout_s=30.0), opener, asyncio.get_running_loop(),
                    b"GET", b"/", [], 0)  # fmt: skip
        a.start()
        a.send_end()
        assert opener.handles == [] and owner.failed == []  # waiting, not failed
        es.update([("127.0.0.1", 9)])
        assert len(opener.handles) == 1 and opener.handles[0].sent == ["end"]  # tried, with its end
        a.cancel()

    run(main())


def test_a_pending_address_set_past_the_binding_timeout_is_a_502(run: Any) -> None:
    async def main() -> None:
        es = EndpointSet()
        owner, opener = Owner(), Opener()
        a = Attempt(owner, _client(es), RequestPolicy(binding_timeout_s=0.05), opener, asyncio.get_running_loop(),
                    b"GET", b"/", [], 0)  # fmt: skip
        a.start()
        await asyncio.wait_for(owner.done.wait(), 10)
        (exc,) = owner.failed
        assert isinstance(exc, NoRoute) and exc.status == 502 and "bindingTimeoutMs" in str(exc)
        assert opener.handles == []
        es.update([("127.0.0.1", 9)])  # too late: nothing happens
        assert opener.handles == []

    run(main())


def test_without_a_binding_timeout_a_pending_set_fails_at_once(run: Any) -> None:
    async def main() -> None:
        owner, opener = Owner(), Opener()
        a = Attempt(owner, _client(EndpointSet()), RequestPolicy(), opener, asyncio.get_running_loop(),
                    b"GET", b"/", [], 0)  # fmt: skip
        try:
            a.start()
        except NoRoute as exc:
            assert "No hosts" in str(exc)
        else:
            raise AssertionError("expected NoRoute")

    run(main())


def _grpc_policy(hold_bytes: int = 1024) -> RequestPolicy:
    return RequestPolicy(
        classifier=make_classifier(ClassifierConfig("io.l5d.h2.grpc.default")),
        retry_budget=RetryBudget(10, 10, 0.2), hold_bytes=hold_bytes, hold_s=30.0, buffer_bytes=1024,
    )  # fmt: skip


def _grpc_head() -> ResponseHead:
    return ResponseHead(200, b"OK", b"2", [(b"content-type", b"application/grpc")])


def test_a_grpc_answer_whose_trailers_say_unavailable_is_retried_when_held(run: Any) -> None:
    async def main() -> None:
        owner, opener = Owner(), Opener()
        es = EndpointSet([("127.0.0.1", 9), ("127.0.0.1", 10)])
        a = Attempt(owner, _client(es), _grpc_policy(), opener, asyncio.get_running_loop(), b"POST", b"/x", [], 1)
        a.start()
        a.send_body(b"req")
        a.send_end()
        first = opener.handles[0]
        a.on_upstream_event(_grpc_head())
        a.on_upstream_event(Body(b"partial"))
        assert owner.events == []  # held back: the trailers may still retry it
        a.on_upstream_event(EndOfMessage([(b"grpc-status", b"14")]))
        assert first.discarded is True and len(opener.handles) == 2
        second = opener.handles[1]
        assert second.sent == [b"req", "end"]  # the body went again
        a.on_upstream_event(_grpc_head())
        a.on_upstream_event(Body(b"answer"))
        a.on_upstream_event(EndOfMessage([(b"grpc-status", b"0")]))
        assert [type(e).__name__ for e in owner.events] == ["ResponseHead", "Body", "EndOfMessage"]
        assert owner.events[1].data == b"answer" and owner.failed == []

    run(main())


def test_a_held_response_too_large_goes_on_and_its_trailers_only_count(run: Any) -> None:
    async def main() -> None:
        owner, opener = Owner(), Opener()
        es = EndpointSet([("127.0.0.1", 9)])
        a = Attempt(owner, _client(es), _grpc_policy(hold_bytes=4), opener, asyncio.get_running_loop(), b"POST", b"/x", [], 0)
        a.start()
        a.on_upstream_event(_grpc_head())
        a.on_upstream_event(Body(b"more than four"))
        assert [type(e).__name__ for e in owner.events] == ["ResponseHead", "Body"]  # released
        a.on_upstream_event(EndOfMessage([(b"grpc-status", b"14")]))
        assert len(opener.handles) == 1  # committed: no retry
        assert isinstance(owner.events[-1], EndOfMessage)
        (ep,) = a.client.endpoints()
        assert ep.failures == 1  # but failure accrual heard it

    run(main())
