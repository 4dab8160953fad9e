"""The report's access-log figure: the median of the per-pair ratios the runner records when a
scenario measures each pair at the same moment (`pair_with`), and a scenario limited to some
targets on purpose leaves no "Not measured" rows for the others."""

from __future__ import annotations

from typing import Any

from bench import report


def _doc() -> dict[str, Any]:
    def row(target: str, reps: list[dict[str, float]], status: str = "ok", reason: str = "") -> dict[str, Any]:
        med = {"rps": sorted(m["rps"] for m in reps)[len(reps) // 2]} if reps else {}
        return {"target": target, "scenario": "h1-accesslog", "status": status, "reason": reason, "reps": reps,
                "median": med}  # fmt: skip

    base = [{"rps": 10_000.0, "cpu_us_per_req": 50.0}] * 6
    on = [{"rps": 9_000.0 + i, "cpu_us_per_req": 55.0, "ratio": r, "cpu_ratio": c}
          for i, (r, c) in enumerate([(0.99, 1.01), (0.90, 1.1), (0.96, 1.04)])]  # fmt: skip
    return {
        "scenarios": {"h1-accesslog": {"metric": "rps", "kind": "max"}},
        "results": [
            row("dtabproxy", base),
            row("dtabproxy-log", on),
            row("dtabproxy-log-json", [{"rps": 9_500.0, "ratio": 0.95, "cpu_ratio": 1.05}]),
            row("envoy", [], "n/a", "this scenario measures dtabproxy, dtabproxy-log only"),
        ],
    }


def test_the_access_log_ratio_is_the_median_of_the_pairs_not_of_the_medians() -> None:
    doc = report.enrich(_doc())
    got = {r["target"]: r for r in doc["results"]}
    assert got["dtabproxy-log"]["vs_no_log"] == 0.96 and got["dtabproxy-log"]["cpu_vs_no_log"] == 1.04
    assert got["dtabproxy-log-json"]["vs_no_log"] == 0.95


def test_the_summary_gives_the_pair_ratio_and_no_not_measured_row_for_targets_left_out_on_purpose() -> None:
    doc = report.enrich(_doc())
    doc.update(machine={"cores": 2, "cpu_model": "x", "kernel": "k", "python": "3.11", "load_average": [0.1, 0.1, 0.1]},
               settings={"mode": "full", "reps": 3, "duration_s": 4.0}, backend={"kind": "nginx"},
               cpu_plan={"note": "proxy pinned to CPU 1"}, started="now")  # fmt: skip
    text = report.tables(doc)
    assert "median of the per-pair ratios 0.960x the req/s, CPU per request 1.040x" in text
    assert "Not measured" not in text and "this scenario measures" not in text
