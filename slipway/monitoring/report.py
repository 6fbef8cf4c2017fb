"""The monitor's HTML report: one self-contained page (plots inlined as PNG) with the latest
verdicts, drift scores over time, reference-vs-current distributions and performance over time."""

from __future__ import annotations

import base64
import html
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from slipway.monitoring.checks import window_checks  # noqa: E402
from slipway.monitoring.detectors import is_numeric  # noqa: E402

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
          "text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}"
          ".bad{background:#fdd;font-weight:bold}.ok{color:#2a2}img{max-width:100%}")


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def score_heatmap(summary: dict) -> str:
    """Drift score (1 = threshold) of every check in every window."""
    wins = [w for w in summary["windows"] if w.get("tested")]
    checks = [window_checks(w) for w in wins]
    keys = sorted({k for c in checks for k in c})
    if not keys:
        return "<p>No window had enough rows to test.</p>"
    grid = np.array([[c.get(k, {}).get("score", np.nan) for c in checks] for k in keys])
    fig, ax = plt.subplots(figsize=(min(2 + 0.5 * len(wins), 14), 1 + 0.28 * len(keys)))
    image = ax.imshow(np.clip(grid, 0, 3), aspect="auto", cmap="RdYlGn_r", vmin=0, vmax=3)
    for i, k in enumerate(keys):
        for j, c in enumerate(checks):
            if c.get(k, {}).get("drifted"):
                ax.text(j, i, "x", ha="center", va="center", fontsize=8)
    ax.set_yticks(range(len(keys)), keys, fontsize=7)
    ax.set_xticks(range(len(wins)), [w["start"][:16] for w in wins], rotation=60, fontsize=7)
    fig.colorbar(image, ax=ax, label="score (>= 1: drift, x)")
    return _png(fig)


def distributions(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> str:
    """Reference vs current histograms (numbers) or shares (categories)."""
    if not columns:
        return ""
    ncols = min(3, len(columns))
    nrows = -(-len(columns) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    for ax, col in zip(axes.ravel(), columns, strict=False):
        ref, cur = reference[col].dropna(), current[col].dropna()
        if is_numeric(ref) and is_numeric(cur):
            lo, hi = np.nanpercentile(np.concatenate([ref, cur]), [0.5, 99.5])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
            ax.hist(ref, bins=bins, density=True, alpha=0.5, label="reference")
            ax.hist(cur, bins=bins, density=True, alpha=0.5, label="current")
        else:
            shares = pd.DataFrame({"reference": ref.astype(str).value_counts(normalize=True),
                                   "current": cur.astype(str).value_counts(normalize=True)})
            shares.fillna(0).head(12).plot.bar(ax=ax, rot=45)
        ax.set_title(col, fontsize=9)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[len(columns):]:
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def performance_plot(summary: dict) -> str:
    """Each tolerated metric per window, with the baseline and the tolerance."""
    wins = [w for w in summary["windows"] if w.get("degradation")]
    names = sorted({m for w in wins for m in w["degradation"]})
    if not names:
        return "<p>No window has enough labels yet.</p>"
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3), squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=True):
        points = [(w["start"][:16], w["degradation"][name]) for w in wins
                  if name in w["degradation"]]
        x = range(len(points))
        ax.plot(x, [p["value"] for _, p in points], marker="o", label=name)
        base, tol = points[0][1]["baseline"], points[0][1]["tolerance"]
        limit = base + tol if name in ("ece", "log_loss") else base - tol
        ax.axhline(base, color="gray", ls="--", label="baseline")
        ax.axhline(limit, color="red", ls=":", label="threshold")
        ax.set_xticks(list(x), [p[0] for p in points], rotation=60, fontsize=7)
        ax.set_title(name)
        ax.legend(fontsize=7)
    return _png(fig)


def _table(window: dict) -> str:
    rows = []
    for key, r in sorted(window_checks(window).items(), key=lambda kv: -kv[1]["score"]):
        p = "" if r.get("p_value") is None else f"{r['p_value']:.3g}"
        cls = "bad" if r["drifted"] else ""
        rows.append(f'<tr class="{cls}"><td>{html.escape(key)}</td><td>{r["method"]}</td>'
                    f'<td>{r["statistic"]:.4g}</td><td>{p}</td><td>{r["threshold"]:.3g}</td>'
                    f'<td>{r["score"]:.2f}</td><td>{"drift" if r["drifted"] else "ok"}</td></tr>')
    for name, d in window.get("degradation", {}).items():
        cls = "bad" if d["degraded"] else ""
        rows.append(f'<tr class="{cls}"><td>performance:{name}</td><td>vs baseline</td>'
                    f'<td>{d["value"]:.4g}</td><td></td><td>{d["tolerance"]:.3g}</td>'
                    f'<td>{d["score"]:.2f}</td><td>{"degraded" if d["degraded"] else "ok"}'
                    f'</td></tr>')
    return ("<table><tr><th>check</th><th>method</th><th>statistic</th><th>p (raw)</th>"
            "<th>threshold</th><th>score</th><th>verdict</th></tr>" + "".join(rows) + "</table>")


def render(summary: dict, reference: pd.DataFrame, current: pd.DataFrame) -> str:
    """The report page for a run: `current` is the latest window's rows."""
    latest = summary["latest"]
    worst = sorted(latest.get("features", {}).items(), key=lambda kv: -kv[1]["score"])[:9]
    dist_cols = [k for k, _ in worst]
    dist_cols += [c for c in ("prediction",) if c in reference and c in current]
    verdict = ("DRIFT / DEGRADATION: " + ", ".join(summary["active"]) if summary["active"]
               else "no check over its threshold")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(summary['monitor'])} monitor</title><style>{_STYLE}</style></head><body>
<h1>{html.escape(summary['monitor'])}: {html.escape(verdict)}</h1>
<p>Model {html.escape(str(summary['model']))}, generated {summary['generated_at']}.
Reference: {summary['reference']['rows']:,} rows ({html.escape(summary['reference']['kind'])}).
Latest window {latest.get('start')} to {latest.get('end')}: {latest.get('rows', 0):,} rows,
{latest.get('labelled', 0):,} labelled.</p>
<h2>Latest window</h2>{_table(latest)}
<h2>Drift scores over time</h2>{score_heatmap(summary)}
<h2>Reference vs latest window</h2><p>The features with the highest scores, and the prediction.</p>
{distributions(reference, current, dist_cols)}
<h2>Performance over time</h2>{performance_plot(summary)}
</body></html>"""
