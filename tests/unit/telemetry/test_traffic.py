"""The playground's traffic window: counts per (service, client, endpoint) over the last
minute, from snapshots of the counters (a fake clock; no loop)."""

from __future__ import annotations

from proxy.telemetry.metrics import Telemetry, record_pair
from proxy.telemetry.traffic import TrafficWindow


def test_counts_over_the_window_from_snapshots() -> None:
    tel = Telemetry()
    rs = tel.router("web")
    svc = rs.service(b"/svc/web", False)
    v1 = rs.client(b"/#/io.l5d.fs/web-v1", False).endpoint("10.0.0.1", 80)
    v2 = rs.client(b"/#/io.l5d.fs/web-v2", False).endpoint("10.0.0.2", 80)
    p1, p2 = rs.pair(svc, v1), rs.pair(svc, v2)
    now = [1000.0]
    w = TrafficWindow(tel, window_s=60.0, sample_s=5.0, clock=lambda: now[0])

    def hits(pair, n):
        for _ in range(n):
            pair.started += 1
            record_pair(pair, 200, 0.001, 0, 0)

    hits(p1, 30)  # before the first snapshot: an hour of history the window must not show
    w.sample()
    for _ in range(13):  # 65 s of snapshots, 1 request to v1 and 3 to v2 in each 5 s
        now[0] += 5.0
        hits(p1, 1)
        hits(p2, 3)
        w.sample()
    counts, span = w.window("web", "/svc/web")
    assert span == 60.0
    assert counts == {"/#/io.l5d.fs/web-v1": {"10.0.0.1:80": 12}, "/#/io.l5d.fs/web-v2": {"10.0.0.2:80": 36}}
    # Younger than a window: since the oldest snapshot, and it says how long that is.
    fresh = TrafficWindow(tel, clock=lambda: now[0])
    fresh.sample()
    now[0] += 2.0
    hits(p2, 5)
    counts, span = fresh.window("web", "/svc/web")
    assert span == 2.0 and counts == {"/#/io.l5d.fs/web-v2": {"10.0.0.2:80": 5}}
    assert fresh.window("web", "/svc/other") == ({}, 2.0)
