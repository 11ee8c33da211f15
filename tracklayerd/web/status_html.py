"""The status page as HTML: one self-contained document (inline CSS, inline SVG sparklines).

It renders the JSON twin's document and nothing else, so the two never disagree. No
scripts and no external assets (the CSP forbids both); hover text comes from SVG <title>
elements. Every value is escaped.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

BAR = 8  # px per hour in a sparkline
TOP = 30  # px: the main series' band
BOTTOM = 12  # px: the failures' band, below it

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d1d1f;background:#f6f7f9}
header{background:#1f2937;color:#f9fafb;padding:.7em 1.5em}
header a{color:#bfdbfe}
h1{font-size:1.3em;margin:0 0 .2em}
main{padding:.5em 1.5em 2em;max-width:1280px}
nav a{margin-right:1em}
h2{font-size:1.15em;margin:1.6em 0 .6em;border-bottom:1px solid #d1d5db}
h3{font-size:1.05em;margin:0 0 .4em}
h4{font-size:.95em;margin:.9em 0 .3em}
table{border-collapse:collapse;background:#fff;margin:.2em 0}
th,td{border:1px solid #e5e7eb;padding:.2em .5em;text-align:left;vertical-align:top}
th{background:#f3f4f6;font-weight:600;white-space:nowrap}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.card{background:#fff;border:1px solid #e5e7eb;border-radius:6px;padding:.8em 1em;
margin:0 0 1.2em}
.row{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
.badge{display:inline-block;padding:0 .55em;border-radius:1em;font-size:.8em;
font-weight:600;vertical-align:middle;margin-left:.3em}
.ok{background:#d1fae5;color:#065f46}.degraded{background:#fef3c7;color:#92400e}
.failing{background:#fee2e2;color:#991b1b}.paused{background:#fde68a;color:#78350f}
.observing{background:#e0e7ff;color:#3730a3}.off,.mode{background:#e5e7eb;color:#374151}
pre{white-space:pre-wrap;word-break:break-all;background:#f9fafb;border:1px solid #e5e7eb;
padding:.35em .5em;margin:.2em 0 .6em;font-size:12px;max-height:14em;overflow:auto}
.muted{color:#6b7280}.none{color:#9ca3af}
svg.spark{display:block;background:#fff}
.legend{font-size:.8em;color:#4b5563}
.swatch{display:inline-block;width:.8em;height:.8em;vertical-align:middle;margin:0 .2em 0 .6em}
ul{margin:.2em 0;padding-left:1.3em}
""".strip()

GREEN, RED, ORANGE, BLUE = "#10b981", "#ef4444", "#f59e0b", "#3b82f6"


def render_status(doc: dict[str, Any]) -> str:
    window = doc["window"]
    hours = [str(h) for h in window["hour_starts"]]
    parts = [
        "<header><h1>tracklayerd status</h1>",
        f"<div>Generated {_e(doc['generated_at'])}; the window is the {_e(window['hours'])} "
        f"hours from {_e(window['since'])} to {_e(window['until'])} (UTC). "
        '<a href="/-/status.json">JSON</a></div></header><main>',
        '<nav><a href="#sources">Sources</a><a href="#processing">Processing</a>'
        '<a href="#destinations">Destinations</a>'
        '<a href="#dedup">Deduplication</a><a href="#validation">Parallel validation</a></nav>',
        _sources(doc["sources"], hours),
        _processing(doc["processing"]),
        _destinations(doc["destinations"], hours),
        _dedup(doc["dedup"]),
        _validation(doc["validation"]),
        "</main>",
    ]
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"robots\" content=\"noindex\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>tracklayerd status</title><style>{_CSS}</style></head><body>"
        + "".join(parts) + "</body></html>\n"
    )


# -- sources ------------------------------------------------------------------------------------


def _sources(sources: Sequence[dict[str, Any]], hours: list[str]) -> str:
    if not sources:
        return '<section id="sources"><h2>Sources</h2><p class="none">No sources.</p></section>'
    rows = []
    for s in sources:
        conversions = s["conversions"]
        share = conversions["share_without_event_id"]
        spark = sparkline(s["hourly"]["received"], s["hourly"]["rejected"], hours,
                          ("received", BLUE), ("rejected", RED))
        rows.append(
            f'<tr id="source-{_e(s["id"])}"><th>{_e(s["id"])}'
            f'<div class="muted">{_e(s["type"] or "not configured")}</div></th>'
            f"<td>{spark}</td>{_n(s['received'])}{_n(s['accepted'])}{_n(s['dropped'])}"
            f"{_n(s['duplicate'])}{_n(s['invalid'])}{_n(s['rejected'])}"
            f"<td class=\"n\">{_pct(share)} <span class=\"muted\">"
            f"({_num(conversions['without_event_id'])} of {_num(conversions['accepted'])})"
            "</span></td></tr>")
    details = "".join(_source_details(s) for s in sources)
    return (
        '<section id="sources"><h2>Sources</h2>'
        "<table><tr><th>Source</th><th>Received per hour</th><th>Received</th>"
        "<th>Accepted</th><th>Dropped (allowlist)</th><th>Duplicates</th><th>Invalid</th>"
        "<th>Rejected</th><th>Conversions without event id</th></tr>"
        + "".join(rows) + "</table>" + details + "</section>"
    )


def _source_details(s: dict[str, Any]) -> str:
    blocks = []
    if s["rejects"]:
        blocks.append("<div><h4>Rejected: top reasons</h4>" + _table(
            ("Reason", "Count", "Latest"),
            [(r["reason"], r["count"], r["last_at"]) for r in s["rejects"]]) + "</div>")
    if s["dropped_events"]:
        blocks.append("<div><h4>Dropped by the allowlist</h4>" + _table(
            ("Event", "Count"), [(d["event"], d["count"]) for d in s["dropped_events"]])
            + "</div>")
    by_event = s["conversions"]["by_event"]
    if by_event:
        blocks.append("<div><h4>Conversions and explicit event ids</h4>" + _table(
            ("Event", "Accepted", "Without event id"),
            [(c["event"], c["accepted"], c["without_event_id"]) for c in by_event]) + "</div>")
    if not blocks:
        return ""
    return (f'<div class="card"><h3>{_e(s["id"])}</h3><div class="row">'
            + "".join(blocks) + "</div></div>")


# -- destinations -------------------------------------------------------------------------------


def _destinations(destinations: Sequence[dict[str, Any]], hours: list[str]) -> str:
    body = "".join(_destination(d, hours) for d in destinations) or (
        '<p class="none">No destinations.</p>')
    return f'<section id="destinations"><h2>Destinations</h2>{body}</section>'


def _destination(d: dict[str, Any], hours: list[str]) -> str:
    health = str(d["health"])
    head = (f'<h3>{_e(d["id"])} <span class="muted">({_e(d["type"])})</span>'
            f'<span class="badge mode">{_e(d["mode"])}</span>'
            f'<span class="badge {_e(health)}">{_e(health)}</span></h3>')
    reasons = ("<ul>" + "".join(f"<li>{_e(r)}</li>" for r in d["health_reasons"]) + "</ul>"
               if d["health_reasons"] else "")
    circuit = d["circuit"]
    circuit_html = (
        '<p class="muted">Circuit: no sender in this process (observe or off mode).</p>'
        if circuit is None else
        f"<p>Circuit: <b>{_e(circuit['state'])}</b>, {_e(circuit['failures_in_a_row'])} failed "
        "requests in a row"
        + (f"; open until {_e(circuit['open_until'])}" if circuit["open_until"] else "")
        + (f"; paused until {_e(circuit['paused_until'])}" if circuit["paused_until"] else "")
        + (f"; last error: {_e(circuit['last_error'])}" if circuit["last_error"] else "")
        + "</p>")
    w, t, q = d["last_24h"], d["totals"], d["queue"]
    counts = _table(
        ("", "Delivered", "Dead", "Suppressed", "Observed"),
        [("last 24 h", w["delivered"], w["dead"], w["suppressed"], w["observed"]),
         ("all time", t["delivered"], t["dead"], t["suppressed"], t["observed"])])
    queue = _table(("Pending", "Retrying", "In flight", "Oldest queued"),
                   [(q["pending"], q["retrying"], q["in_flight"], q["oldest_created_at"])])
    latency = d["latency_secs"]
    rates = (f"<p>Acceptance (delivered / (delivered + dead), 24 h): "
             f"<b>{_pct(d['acceptance_rate'])}</b>. Delivery latency over the latest "
             f"{_num(latency['sample'])} deliveries: p50 <b>{_secs(latency['p50'])}</b>, "
             f"p95 <b>{_secs(latency['p95'])}</b>.</p>")
    if d["mode"] != "live" and not latency["sample"]:
        rates = ""  # it sends nothing: there is nothing to rate
    last = d["last_request"]
    last_html = ("<p class=\"muted\">No request sent yet.</p>" if last is None else
                 f"<p>Latest request: {_e(last['at'])}, "
                 + (f"HTTP {_e(last['http_status'])}" if last["http_status"] is not None
                    else "no answer")
                 + (f" ({_e(last['error'])})" if last["error"] else "")
                 + (" <b>ok</b>" if last["ok"] else " <b>failed</b>") + "</p>")
    hourly = d["hourly"]
    failed = [a + b for a, b in zip(hourly["dead"], hourly["failed_requests"], strict=True)]
    # An observing destination sends nothing: what it would have sent is its activity.
    shown = ("observed", BLUE) if d["mode"] == "observe" else ("delivered", GREEN)
    spark = sparkline(hourly[shown[0]], failed, hours, shown, ("dead + failed requests", RED))
    answers = ("" if last is None and not d["errors"] else
               _answers("Latest platform errors", "errors", d["errors"])
               + _answers("Latest platform warnings", "warnings", d["warnings"]))
    return (
        f'<article class="card" id="destination-{_e(d["id"])}">{head}{reasons}{circuit_html}'
        f'<div class="row"><div><h4>Per hour, 24 h</h4>{spark}</div>'
        f"<div><h4>Outcomes</h4>{counts}</div><div><h4>Queue now</h4>{queue}</div></div>"
        f"{rates}{last_html}{answers}"
        + '<div class="row">' + _quality(d["match_quality"])
        + _suppression(d["consent"], d["dedup"]) + "</div>"
        + _dead_letters(d["dead_letters"]) + "</article>"
    )


def _answers(title: str, kind: str, answers: Sequence[dict[str, Any]]) -> str:
    if not answers:
        return f'<h4>{_e(title)}</h4><p class="none">None in the window.</p>'
    items = []
    for a in answers:
        status = f"HTTP {a['http_status']}" if a["http_status"] is not None else "no answer"
        text = a["response"] if a["response"] is not None else a["error"]
        items.append(f"<div>{_e(a['at'])}, {_e(status)}"
                     + (f": {_e(a['error'])}" if a["error"] and a["response"] else "")
                     + f"<pre>{_e(text if text is not None else '')}</pre></div>")
    return f'<div class="{kind}"><h4>{_e(title)} (verbatim)</h4>{"".join(items)}</div>'


def _quality(quality: dict[str, Any] | None) -> str:
    if quality is None:
        return ('<div class="quality"><h4>Match quality</h4>'
                '<p class="none">No scored deliveries (the platform has no match-quality model, '
                "or none in the window).</p></div>")
    bands = quality["bands"]
    missing = quality["top_missing"]
    return (
        f'<div class="quality"><h4>Match quality (since {_e(quality["since"])})</h4>'
        f"<p>Mean <b>{_e(quality['mean'])}</b> / 10 over {_num(quality['deliveries'])} "
        "deliveries.</p>"
        + _table(tuple(bands), [tuple(bands.values())])
        + ("<h4>Top missing identifiers</h4>" + _table(
            ("Identifier", "Deliveries lacking it"),
            [(m["identifier"], m["deliveries"]) for m in missing]) if missing else "")
        + "</div>")


def _suppression(consent: dict[str, Any], dedup: dict[str, Any]) -> str:
    rules = consent["by_rule"]
    return (
        '<div class="consent"><h4>Suppressed, 24 h</h4>'
        f"<p>By consent: <b>{_num(consent['suppressed'])}</b>; by the delivery ledger (event "
        f"id already delivered): <b>{_num(dedup['ledger_suppressed'])}</b>.</p>"
        + (_table(("Consent rule", "Deliveries"), [(r["rule"], r["count"]) for r in rules])
           if rules else "")
        + "</div>")


def _dead_letters(dead: Sequence[dict[str, Any]]) -> str:
    if not dead:
        return '<h4>Recent dead letters</h4><p class="none">None.</p>'
    rows = "".join(
        f'<tr><td><a href="{_e(d["trace"])}">#{_e(d["event"])}</a></td><td>{_e(d["source"])}'
        f"</td><td>{_e(d['name'] or '')}</td><td>{_e(d['at'])}</td>{_n(d['attempts'])}"
        f"<td>{_e(d['reason'] or '')}</td></tr>" for d in dead)
    return ('<div class="dead-letters"><h4>Recent dead letters</h4><table><tr><th>Event</th>'
            "<th>Source</th><th>Name</th><th>Dead since</th><th>Attempts</th><th>Reason</th>"
            f"</tr>{rows}</table></div>")


# -- processing ---------------------------------------------------------------------------------


def _processing(processing: dict[str, Any]) -> str:
    if not processing["backlog"]:
        text = "The processor has processed every accepted event."
    else:
        text = (f"<b>{_num(processing['backlog'])}</b> accepted events wait for the processor; "
                f"the oldest arrived {_e(processing['oldest_unprocessed_at'])} "
                f"({_secs(processing['lag_secs'])} ago). During a burst ingest comes first "
                "and this backlog is processed after it; one that keeps growing means more "
                "traffic than this machine can process.")
    return f'<section id="processing"><h2>Processing</h2><p>{text}</p></section>'


# -- dedup and validation -----------------------------------------------------------------------


def _dedup(dedup: dict[str, Any]) -> str:
    overlaps = dedup["overlaps"]
    table = (_table(("First source", "Repeating source", "Event", "Duplicates"),
                    [(o["first_source"], o["duplicate_source"], o["event"], o["count"])
                     for o in overlaps])
             if overlaps else '<p class="none">No duplicates across or within sources.</p>')
    return (f'<section id="dedup"><h2>Deduplication, 24 h</h2>'
            f"<p>{_num(dedup['duplicates'])} events were duplicates of an earlier one.</p>"
            f"{table}</section>")


def _validation(validation: dict[str, Any]) -> str:
    rows = []
    for d in validation["destinations"]:
        values = "; ".join(f"{v['currency'] or '(no currency)'} {v['value']:,.2f} "
                           f"({v['events']:,})" for v in d["values"])
        rows.append((d["destination"], d["arrived"], d["delivered"], d["observed"],
                     d["consent_suppressed"], d["ledger_suppressed"], d["consent_limited"],
                     d["dead"], d["queued"], d["match_quality"], values))
    destinations = _table(
        ("Destination", "Arrived", "Delivered", "Observed (would send)",
         "Suppressed: consent", "Suppressed: ledger", "Sent limited (consent)", "Dead",
         "Queued", "Match quality", "Value sent, per currency (events)"),
        rows) if rows else '<p class="none">No deliveries.</p>'
    events = _table(("Event", "Received", "Accepted", "Duplicates", "Dropped", "Invalid"),
                    [(e["event"] or "(undecodable)", e["received"], e["accepted"],
                      e["duplicate"], e["dropped"], e["invalid"])
                     for e in validation["events"]]) if validation["events"] else ""
    return ('<section id="validation"><h2>Parallel validation</h2>'
            f"<p>Events received since {_e(validation['since'])}: "
            f'<span class="muted">{_e(validation["note"])}</span></p>'
            f'<div class="row"><div>{destinations}</div><div>{events}</div></div></section>')


# -- pieces -------------------------------------------------------------------------------------


def sparkline(top: Sequence[int], bottom: Sequence[int], hours: Sequence[str],
              top_series: tuple[str, str], bottom_series: tuple[str, str]) -> str:
    """Two bar series per hour, each scaled to its own maximum (failures are rare next to
    successes and would not show on a common scale); hover an hour for its figures."""
    top_max, bottom_max = max(top, default=0), max(bottom, default=0)
    width, height = BAR * len(top), TOP + 2 + BOTTOM
    (top_name, top_colour), (bottom_name, bottom_colour) = top_series, bottom_series
    bars = []
    for i, (up, down) in enumerate(zip(top, bottom, strict=True)):
        x = i * BAR
        up_h = round(TOP * up / top_max, 1) if top_max else 0
        down_h = round(BOTTOM * down / bottom_max, 1) if bottom_max else 0
        hour = hours[i] if i < len(hours) else ""
        bars.append(
            f"<g><title>{_e(hour)}: {up:,} {_e(top_name)}, {down:,} {_e(bottom_name)}</title>"
            f'<rect x="{x}" y="0" width="{BAR}" height="{height}" fill="transparent"/>'
            f'<rect x="{x}" y="{TOP - up_h}" width="{BAR - 1}" height="{up_h}" '
            f'fill="{top_colour}"/>'
            f'<rect x="{x}" y="{TOP + 2}" width="{BAR - 1}" height="{down_h}" '
            f'fill="{bottom_colour}"/></g>')
    label = (f"{top_name} per hour, at most {top_max:,}; {bottom_name} per hour, "
             f"at most {bottom_max:,}")
    return (
        f'<svg class="spark" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{_e(label)}">'
        f'<line x1="0" y1="{TOP + 1}" x2="{width}" y2="{TOP + 1}" stroke="#e5e7eb"/>'
        + "".join(bars) + "</svg>"
        f'<div class="legend"><span class="swatch" style="background:{top_colour}"></span>'
        f"{_e(top_name)} (max {top_max:,}/h)"
        f'<span class="swatch" style="background:{bottom_colour}"></span>'
        f"{_e(bottom_name)} (max {bottom_max:,}/h)</div>")


def _table(head: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    header = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return _n(value)
    if isinstance(value, float):
        return f'<td class="n">{value:g}</td>'
    if value is None:
        return '<td class="none">-</td>'
    return f"<td>{_e(value)}</td>"


def _n(value: int) -> str:
    return f'<td class="n">{_num(value)}</td>'


def _num(value: int) -> str:
    return f"{value:,}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _secs(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)
