"""The PNG beside each result file: one panel per scenario, one bar per target.

matplotlib (the `bench` extra) with the Agg backend, so no display is needed. If it is
not installed the run still succeeds and says the chart was skipped. Reads the results
document only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import METRIC_KEY

LABELS = {
    "rps": "req/s (higher is better)",
    "p99": "p99 ms (lower is better)",
    "kib_per_conn": "KiB per idle connection (lower is better)",
}
COLORS = {
    "direct": "#7f7f7f",
    "dtabproxy": "#d62728",
    "dtabproxy-log": "#ff9896",
    "dtabproxy-log-json": "#e377c2",
    "envoy": "#1f77b4",
    "nginx": "#2ca02c",
    "haproxy": "#9467bd",
    "aiohttp": "#ff7f0e",
}


def draw(doc: dict[str, Any], path: Path) -> str | None:
    """Write the chart; returns None on success, or why it was skipped."""
    try:
        import matplotlib
    except ImportError:
        return (
            "matplotlib is not installed (pip install 'dtabproxy[bench]' or .venv/bin/pip install matplotlib)"
        )
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for name, sc in doc["scenarios"].items():
        key = METRIC_KEY[sc["metric"]]
        bars = [
            (r["target"], r["median"][key])
            for r in doc["results"]
            if r["scenario"] == name and r["status"] == "ok" and key in r.get("median", {})
        ]
        if bars:
            panels.append((name, sc, bars))
    if not panels:
        return "no successful measurement to draw"
    cols = 3 if len(panels) > 4 else 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, sc, bars) in zip(axes.flat, panels, strict=False):
        names = [b[0] for b in bars]
        values = [b[1] for b in bars]
        ax.bar(names, values, color=[COLORS.get(n, "#17becf") for n in names])
        ax.set_title(f"{name}: {sc['title']}", fontsize=8)
        ax.set_ylabel(LABELS[sc["metric"]], fontsize=7)
        ax.tick_params(axis="x", labelsize=7, rotation=30)
        ax.tick_params(axis="y", labelsize=7)
        top = max(values) if values else 0
        for i, v in enumerate(values):
            ax.text(
                i,
                v + top * 0.01,
                f"{v:,.0f}" if v >= 100 else f"{v:.2f}",
                ha="center",
                va="bottom",
                fontsize=6,
            )
    m = doc["machine"]
    fig.suptitle(
        f"dtabproxy bench ({doc['settings']['mode']}, {doc['started']}), {m['cores']} cores {m['cpu_model']}, "
        f"backend {doc['backend'].get('kind')}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
