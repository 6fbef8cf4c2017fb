"""A self-contained HTML report of an experiment's analysis (plots inlined as PNG)."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from slipway.experiments.analysis import metric  # noqa: E402


def _png(figure: plt.Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def plots(summary: dict[str, Any], units: pd.DataFrame, exposures: pd.DataFrame,
          look_every: str) -> list[str]:
    """The cumulative primary effect with its intervals, the metric's distribution per variant
    and the exposures per period, as inline images."""
    primary = summary["metrics_order"][0]
    images = []
    figure, ax = plt.subplots(figsize=(7, 3.2))
    for variant, looks in summary["sequential"].items():
        if not looks:
            continue
        at = pd.to_datetime([look["at"] for look in looks], format="ISO8601")
        ax.plot(at, [look["effect"] for look in looks], marker="o", label=f"{variant} effect")
        ax.fill_between(at, *zip(*(look["ci"] for look in looks), strict=True), alpha=0.25,
                        label="fixed-horizon interval")
        ax.fill_between(at, *zip(*(look["sequence"] for look in looks), strict=True),
                        alpha=0.12, label="confidence sequence")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_title(f"cumulative effect on {primary} (vs control)")
    ax.legend(fontsize=7)
    images.append(_png(figure))
    figure, ax = plt.subplots(figsize=(7, 3.2))
    for variant, rows in units.groupby("variant"):
        ax.hist(metric(rows, primary)[0], bins=20, alpha=0.5, label=str(variant))
    ax.set_title(f"{primary} per unit")
    ax.legend(fontsize=7)
    images.append(_png(figure))
    figure, ax = plt.subplots(figsize=(7, 3.2))
    counts = exposures.groupby([exposures["timestamp"].dt.floor(look_every), "variant"]).size()
    counts.unstack(fill_value=0).plot.bar(ax=ax)
    ax.set_title(f"exposures per {look_every}")
    images.append(_png(figure))
    return images


def render(summary: dict[str, Any], images: list[str]) -> str:
    """The report page."""
    rows = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{html.escape(m)}</td><td>{r['effect']:+.4g}</td>"
        f"<td>[{r['ci'][0]:+.4g}, {r['ci'][1]:+.4g}]</td><td>{r['relative']:+.2%}</td>"
        f"<td>{r['p_value']:.3g}</td><td>{r.get('p_adjusted', float('nan')):.3g}</td>"
        f"<td>{'' if r['cuped_variance_reduction'] is None else format(r['cuped_variance_reduction'], '.1%')}</td></tr>"  # noqa: E501
        for v, by_metric in summary["metrics"].items() for m, r in by_metric.items())
    guard = "".join(
        f"<tr><td>{html.escape(v)}</td><td>{html.escape(k)}</td><td>{g['value']:.4g}</td>"
        f"<td>{g['limit']:.4g}</td><td>{'ok' if g['ok'] else 'FAILED'}</td></tr>"
        for v, checks in summary["guardrails"].items() for k, g in checks.items())
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in summary["reasons"])
    srm = summary["srm"]
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>Experiment {html.escape(summary['experiment'])}</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td,th{{padding:.2em .6em;border-bottom:1px solid #ddd}}</style></head><body>
<h1>{html.escape(summary['experiment'])}: {html.escape(summary['decision'])}</h1>
<p>{summary['units']} units, {summary['exposures']} exposures, as of
{html.escape(summary['as_of'])}. Winner: {html.escape(str(summary['winner']))}.</p>
<ul>{reasons}</ul>
<h2>Sample ratio</h2><p>units {srm['counts']} vs expected
{ {k: round(v) for k, v in srm['expected'].items()} }: chi2 {srm['chi2']:.3g},
p = {srm['p_value']:.3g}{' (FLAGGED)' if srm['flagged'] else ''}</p>
<h2>Metrics</h2><table><tr><th>variant</th><th>metric</th><th>effect</th><th>interval</th>
<th>relative</th><th>p</th><th>p adjusted</th><th>CUPED variance removed</th></tr>{rows}</table>
<h2>Guardrails</h2><table><tr><th>variant</th><th>check</th><th>value</th><th>limit</th>
<th></th></tr>{guard}</table>
<h2>Plots</h2>{''.join(images)}
</body></html>"""
