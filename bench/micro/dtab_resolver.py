"""Micro-benchmark of the resolver the data plane calls per request. Prints ns/op.

Measures, with `timeit` (best of several repeats, so a busy neighbour inflates less):

- bind of a 3-hop name through a compiled table of 10, 1,000 and 10,000 dentries,
  every lookup a memo miss, and the ratio 10,000 / 10 (the design promises a lookup
  that walks the path, not the table: the ratio must stay within 1.5x);
- the compiled lookup alone (one hop, memo miss) at the same sizes;
- a memo hit: the same lookup again, and a whole bind whose lookups all hit;
- parsing a 3-entry `l5d-dtab` header value (`read_dtab`, and `local_dtab` as the
  server calls it, from bytes).

The table has the shape of a mesh with one route per service:

    /svc => /host;  /host => /srv;  /srv/app0 => /$/inet/10.0.0.0/80; ...

so `/svc/appK/rJ` goes /svc -> /host -> /srv/appK -> /$/inet (3 dtab hops, then the
system namer). Misses are forced with distinct residuals (`/rJ`): the memo keeps
MEMO_SIZE paths and evicts the oldest, so cycling through twice as many paths never
hits. Run: python -m bench.micro.dtab_resolver [--quick]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import timeit
from collections.abc import Callable

SIZES = (10, 1_000, 10_000)
MAX_RATIO = 1.5  # the bound: 10,000 dentries within 1.5x of 10
HEADER = "/a=>/b;/c=>/d;/e=>/f"


def table_text(n: int) -> str:
    services = max(1, n - 2)
    lines = ["/svc => /host;", "/host => /srv;"]
    lines += [
        f"/srv/app{i} => /$/inet/10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/80;" for i in range(services)
    ]
    return "\n".join(lines)


def best_ns(fn: Callable[[], object], ops: int, repeat: int) -> float:
    """Best per-op time in ns over `repeat` runs of `fn` (which does `ops` operations)."""
    return min(timeit.repeat(fn, number=1, repeat=repeat)) / ops * 1e9


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.micro.dtab_resolver", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    args = ap.parse_args(argv)
    try:
        import dtab
        from dtab.compile import MEMO_SIZE
    except ImportError as exc:
        print(f"dtab_resolver: skipped: the dtab package is not importable ({exc})")
        return 0
    quick = args.quick or os.environ.get("BENCH_MICRO_QUICK") == "1"  # set by python -m bench.micro --quick
    repeat = 3 if quick else 5
    rnd = random.Random(42)
    n_paths = 2 * MEMO_SIZE  # twice the memo: a FIFO memo never hits while cycling
    print(f"dtab resolver micro-benchmark (Python {sys.version.split()[0]}, best of {repeat}, ns/op)")

    bind_miss: dict[int, float] = {}
    for n in SIZES:
        table = dtab.read_dtab(table_text(n))
        services = max(1, n - 2)
        # Distinct residuals make every path, and every rewritten path, new to the memo.
        paths = [dtab.Path.of("svc", f"app{rnd.randrange(services)}", f"r{j}") for j in range(n_paths)]
        compiled = dtab.compile(table)
        bound = dtab.bind(compiled, paths[0])
        leaves = dtab.evaluate(bound)
        assert leaves and all(isinstance(b, dtab.Bound) for b in leaves), bound.show()

        def binds(c: dtab.CompiledDtab = compiled, ps: list[dtab.Path] = paths) -> None:
            b = dtab.bind
            for p in ps:
                b(c, p)

        def lookups(c: dtab.CompiledDtab = compiled, ps: list[dtab.Path] = paths) -> None:
            lk = c.lookup
            for p in ps:
                lk(p)

        binds()  # fill the memo with the other half's paths, so the first timed run misses too
        bind_miss[n] = best_ns(binds, n_paths, repeat)
        # A fresh table per size for the lookup alone (the binds above filled the memo).
        compiled2 = dtab.compile(table)
        lookups(compiled2)
        lk_miss = best_ns(lambda: lookups(compiled2), n_paths, repeat)  # noqa: B023 - called before the next size
        print(
            f"  {n:>6,} dentries: bind 3 hops (memo miss) {bind_miss[n]:>9,.0f}   lookup 1 hop (memo miss) {lk_miss:>7,.0f}"
        )

    ratio = bind_miss[SIZES[-1]] / bind_miss[SIZES[0]]
    verdict = "ok" if ratio <= MAX_RATIO else f"OVER the {MAX_RATIO}x bound"
    print(f"  ratio 10,000 / 10 dentries (bind, memo miss): {ratio:.2f}x ({verdict})")

    # Memo hits: one path over and over, on the largest table.
    table = dtab.read_dtab(table_text(SIZES[-1]))
    compiled = dtab.compile(table)
    path = dtab.Path.of("svc", "app7", "r0")
    dtab.bind(compiled, path)
    hit_ops = 100_000
    lk = compiled.lookup
    hit_lookup = best_ns(lambda: [lk(path) for _ in range(hit_ops)], hit_ops, repeat)
    hit_bind = best_ns(
        lambda: [dtab.bind(compiled, path) for _ in range(hit_ops // 10)], hit_ops // 10, repeat
    )
    print(f"  memo hit: lookup {hit_lookup:,.0f}   bind 3 hops, every lookup a hit {hit_bind:,.0f}")

    parse_ops = 20_000
    header_bytes = HEADER.encode()
    parse = best_ns(lambda: [dtab.read_dtab(HEADER) for _ in range(parse_ops)], parse_ops, repeat)
    local = best_ns(
        lambda: [dtab.local_dtab((), (header_bytes,)) for _ in range(parse_ops)], parse_ops, repeat
    )
    print(
        f"  l5d-dtab header of 3 entries ({HEADER!r}): read_dtab {parse:,.0f}   local_dtab(bytes) {local:,.0f}"
    )
    return 0 if ratio <= MAX_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
