"""Response classifiers (`service.responseClassifier`): is a response a success, a
failure, or a failure that may be retried?

The class drives three things: retries (RETRYABLE, within the retry budget), failure
accrual (anything but SUCCESS counts against the endpoint) and success metrics.
Linkerd 1's kinds, with its semantics (io.buoyant.linkerd.protocol.http.ResponseClassifiers,
finagle-h2 H2Classifiers, linkerd GrpcClassifiers):

HTTP (`io.l5d.http.*`, HTTP/1.1 routers) and HTTP/2 (`io.l5d.h2.*`, h2 routers):

| kind | 5xx response | other response |
| --- | --- | --- |
| nonRetryable5XX (the default of both) | FAILURE | SUCCESS |
| retryableRead5XX | RETRYABLE for GET, HEAD, OPTIONS, TRACE; else FAILURE | SUCCESS |
| retryableIdempotent5XX | RETRYABLE for those and PUT, DELETE; else FAILURE | SUCCESS |
| retryableAll5XX | RETRYABLE for those and POST, PATCH; else FAILURE | SUCCESS |
| allSuccessful | SUCCESS | SUCCESS |

An HTTP/1.1 router also honours `l5d-retryable: true` on a response (a proxy further
on saying the request never reached its destination): a FAILURE becomes RETRYABLE,
whatever the method (Linkerd's HeaderRetryable wraps every http classifier; its h2
router has no such wrapper, and neither do ours).

gRPC (`io.l5d.h2.grpc.*`): the `grpc-status` decides, from the trailers, or from the
head of a trailers-only response. A code in `successStatusCodes` (default {0}) is
SUCCESS; otherwise RETRYABLE when the kind says so, else FAILURE:
`default` retries UNAVAILABLE (14) only; `compliant` retries 14 and also HTTP 429, 502,
503, 504 responses without a grpc-status and a REFUSED_STREAM reset;
`retryableStatusCodes` retries the codes listed; `alwaysRetryable` every code;
`neverRetryable` none. A response with no grpc-status at all is a FAILURE. These kinds
`needs_trailers`: a head with status 2xx and no grpc-status cannot be classified
until the trailers (`at_head` says whether the head alone decides).

Errors instead of a response (`classify_error`), by what went wrong:

- CONNECT (no connection), REFUSED (REFUSED_STREAM, or a GOAWAY below the stream: the
  request was not processed): these are requeued by the attempt layer within the
  client's requeue budget, for any method, before the classifier is asked; when the
  requeue budget is spent they classify like WRITE below (Finagle's WriteException);
- WRITE: the connection failed while the request was being written;
- RESET: the connection closed or the stream was reset after the request was sent;
- TIMEOUT: the per-attempt timeout (`requestAttemptTimeoutMs`) fired;
- FRAMING: the response was malformed (HTTP/1.1 only, Linkerd's FramingException);
- OTHER: anything else (the proxy's own limits, a bad response on h2).

For the 5XX kinds, WRITE, RESET, TIMEOUT (and FRAMING on http) are RETRYABLE when the
method is one the kind retries, else FAILURE; OTHER is FAILURE; allSuccessful says
FAILURE for every error. gRPC kinds say FAILURE for every error except `compliant`,
which retries REFUSED. Whether a RETRYABLE request is retried also depends on its body
(a body larger than `retryBufferSize.requestBytes` cannot be replayed: Linkerd's
"chunked requests are never retryable"), the budget and the deadline: the attempt
layer's call.

Pure and allocation-free per call: tables are built once per classifier.
"""

from __future__ import annotations

from typing import Final, Protocol

from config.policy import ClassifierConfig

SUCCESS: Final = 0
FAILURE: Final = 1
RETRYABLE: Final = 2
NAMES: Final = ("success", "failure", "retryable")

# Error kinds for classify_error.
CONNECT: Final = "connect"
REFUSED: Final = "refused"
WRITE: Final = "write"
RESET: Final = "reset"
TIMEOUT: Final = "timeout"
FRAMING: Final = "framing"
OTHER: Final = "other"
ERRORS: Final = (CONNECT, REFUSED, WRITE, RESET, TIMEOUT, FRAMING, OTHER)

READ_METHODS: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
IDEMPOTENT_METHODS: Final = READ_METHODS | {b"PUT", b"DELETE"}
ALL_METHODS: Final = IDEMPOTENT_METHODS | {b"POST", b"PATCH"}

GRPC_UNAVAILABLE: Final = 14
#: HTTP statuses gRPC maps to UNAVAILABLE (doc/http-grpc-status-mapping.md): retryable
#: under `io.l5d.h2.grpc.compliant`.
_GRPC_RETRYABLE_HTTP: Final = frozenset({429, 502, 503, 504})


class Classifier(Protocol):
    kind: str
    #: True when the final class may need the trailers (gRPC status).
    needs_trailers: bool

    def classify(self, method: bytes, status: int, grpc_status: int | None, *,
                 retryable_header: bool = False) -> int:  # fmt: skip
        """The class of a complete response. `grpc_status` is the trailers' (or a
        trailers-only head's) `grpc-status`, None when there was none; `retryable_header`
        is True when the response carried `l5d-retryable: true`."""
        ...

    def at_head(self, status: int, grpc_status: int | None) -> bool:
        """Does the response head alone decide the class?"""
        ...

    def classify_error(self, method: bytes, error: str) -> int:
        """The class of a request that got no response (an error kind above)."""
        ...


class StatusClassifier:
    """The HTTP and HTTP/2 5XX kinds and allSuccessful."""

    __slots__ = ("kind", "needs_trailers", "_retry_methods", "_all_ok", "_header", "_error_kinds")

    def __init__(self, kind: str, retry_methods: frozenset[bytes], *, all_ok: bool = False) -> None:
        self.kind = kind
        self.needs_trailers = False
        self._retry_methods = retry_methods
        self._all_ok = all_ok
        self._header = kind.startswith("io.l5d.http.")  # HeaderRetryable: HTTP/1.1 only
        # Retryable errors (Finagle's TimeoutAndWriteExceptionsOnly, ChannelClosed, and on
        # http the FramingException); CONNECT/REFUSED reach here only past the requeues.
        errs = {CONNECT, REFUSED, WRITE, RESET, TIMEOUT}
        if self._header:
            errs.add(FRAMING)
        self._error_kinds = frozenset(errs)

    def classify(self, method: bytes, status: int, grpc_status: int | None, *,
                 retryable_header: bool = False) -> int:  # fmt: skip
        if status < 500 or status > 599 or self._all_ok:
            return SUCCESS
        if method in self._retry_methods:
            return RETRYABLE
        if retryable_header and self._header:
            return RETRYABLE
        return FAILURE

    def at_head(self, status: int, grpc_status: int | None) -> bool:
        return True

    def classify_error(self, method: bytes, error: str) -> int:
        if self._all_ok or error not in self._error_kinds:
            return FAILURE
        return RETRYABLE if method in self._retry_methods else FAILURE

    def __repr__(self) -> str:
        return f"StatusClassifier({self.kind})"


class GrpcClassifier:
    """The `io.l5d.h2.grpc.*` kinds."""

    __slots__ = ("kind", "needs_trailers", "_success", "_retryable", "_retry_all", "_compliant")

    def __init__(self, kind: str, success: frozenset[int], retryable: frozenset[int], *,
                 retry_all: bool = False, compliant: bool = False) -> None:  # fmt: skip
        self.kind = kind
        self.needs_trailers = True
        self._success = success
        self._retryable = retryable
        self._retry_all = retry_all
        self._compliant = compliant

    def classify(self, method: bytes, status: int, grpc_status: int | None, *,
                 retryable_header: bool = False) -> int:  # fmt: skip
        if grpc_status is not None:
            if grpc_status in self._success:
                return SUCCESS
            if self._retry_all or grpc_status in self._retryable:
                return RETRYABLE
            return FAILURE
        # No grpc-status anywhere: a plain HTTP error, or a stream that ended without one.
        if self._compliant and status in _GRPC_RETRYABLE_HTTP:
            return RETRYABLE
        return FAILURE

    def at_head(self, status: int, grpc_status: int | None) -> bool:
        # Linkerd classifies a 4xx/5xx head or a trailers-only head at once; a 2xx
        # (or 1xx/3xx) head waits for the end of the stream.
        return grpc_status is not None or status >= 400

    def classify_error(self, method: bytes, error: str) -> int:
        return RETRYABLE if self._compliant and error == REFUSED else FAILURE

    def __repr__(self) -> str:
        return f"GrpcClassifier({self.kind})"


_STATUS_KINDS: Final = {
    "nonRetryable5XX": frozenset[bytes](),
    "retryableRead5XX": READ_METHODS,
    "retryableIdempotent5XX": IDEMPOTENT_METHODS,
    "retryableAll5XX": ALL_METHODS,
    "allSuccessful": frozenset[bytes](),
}


#: Classifiers hold no state: one per distinct config (the configs come from the config
#: file, so there are few), however many routes use it.
_MADE: dict[ClassifierConfig, Classifier] = {}


def make_classifier(config: ClassifierConfig) -> Classifier:
    """The classifier of a service policy (shared among the routes that use the config)."""
    made = _MADE.get(config)
    if made is None:
        if len(_MADE) >= 1024:
            _MADE.clear()
        made = _MADE[config] = _make_classifier(config)
    return made


def _make_classifier(config: ClassifierConfig) -> Classifier:
    kind = config.kind
    for family in ("io.l5d.http.", "io.l5d.h2."):
        if kind.startswith(family) and kind[len(family):] in _STATUS_KINDS:
            short = kind[len(family):]
            return StatusClassifier(kind, _STATUS_KINDS[short], all_ok=short == "allSuccessful")
    success = config.success_status_codes
    if kind == "io.l5d.h2.grpc.default":
        return GrpcClassifier(kind, success, frozenset({GRPC_UNAVAILABLE}))
    if kind == "io.l5d.h2.grpc.compliant":
        return GrpcClassifier(kind, success, frozenset({GRPC_UNAVAILABLE}), compliant=True)
    if kind == "io.l5d.h2.grpc.retryableStatusCodes":
        return GrpcClassifier(kind, success, config.retryable_status_codes)
    if kind == "io.l5d.h2.grpc.alwaysRetryable":
        return GrpcClassifier(kind, success, frozenset(), retry_all=True)
    if kind == "io.l5d.h2.grpc.neverRetryable":
        return GrpcClassifier(kind, success, frozenset())
    raise ValueError(f"unknown response classifier {kind!r}")
