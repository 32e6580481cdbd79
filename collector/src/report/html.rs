//! The E26 report as one self-contained HTML page: inline CSS (with print
//! rules, so a browser's "print to PDF" gives clean pages) and inline SVG
//! charts, drawn from the report's JSON ([`super::e26`]) and nothing else.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{Map, Value};

const STYLE: &str = "
body { font: 13px/1.45 system-ui, sans-serif; color: #1b2631; margin: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; border-bottom: 2px solid #1f4e79; padding-bottom: 3px; margin-top: 28px; }
h3 { font-size: 14px; margin: 16px 0 4px; }
.meta, .about, .src { color: #566573; margin: 2px 0; }
.src a { color: #1f4e79; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 10.5px; }
th, td { border: 1px solid #d5d8dc; padding: 3px 5px; text-align: left; vertical-align: top; white-space: nowrap; }
td.wrap { white-space: normal; min-width: 90px; }
th { background: #eaf0f6; }
tr:nth-child(even) td { background: #fafbfc; }
.unknown { color: #a6acaf; font-style: italic; }
.bad { color: #b03a2e; font-weight: 600; }
.ok { color: #1e8449; }
.summary { display: grid; grid-template-columns: repeat(4, 1fr); gap: 8px; margin: 14px 0; }
.card { border: 1px solid #d5d8dc; border-radius: 4px; padding: 8px; }
.card b { display: block; font-size: 20px; }
.none { color: #566573; font-style: italic; }
pre { background: #f4f6f7; padding: 8px; font-size: 10.5px; white-space: pre-wrap; word-break: break-all; }
svg text { font: 10px system-ui, sans-serif; fill: #1b2631; }
@page { size: A4 landscape; margin: 12mm; }
@media print {
  body { margin: 0; }
  section { break-inside: auto; }
  h2 { break-after: avoid; }
  tr, .card, svg { break-inside: avoid; }
  #appendix { break-before: page; }
}
";

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A cell's text: arrays joined, an empty value stated as unknown.
fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Value::Bool(true) => "yes".into(),
        Value::Bool(false) => "no".into(),
        other => other.to_string(),
    };
    if text.is_empty() {
        "<span class=\"unknown\">unknown</span>".into()
    } else {
        esc(&text)
    }
}

/// Columns of free text, wrapped in their cells (the others stay on one
/// line, so that identifiers are never split).
const WRAP: &[&str] = &[
    "conduits",
    "conduit",
    "summary",
    "state_note",
    "software",
    "protocols",
    "roles",
    "detail",
    "vendor",
    "device_vendor",
    "zone_names",
];

/// A sensor's conduits (the registry's JSON) as text.
fn conduits_text(json: &str) -> String {
    let Ok(list) = serde_json::from_str::<Vec<crate::registry::Conduit>>(json) else {
        return esc(json);
    };
    if list.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = list
        .iter()
        .map(|c| {
            let mut t = format!("{} → {}", c.from, c.to);
            if !c.ports.is_empty() {
                let ports: Vec<String> = c.ports.iter().map(u16::to_string).collect();
                let _ = write!(t, " ports {}", ports.join(", "));
            }
            if !c.protocols.is_empty() {
                let _ = write!(t, " ({})", c.protocols.join(", "));
            }
            esc(&t)
        })
        .collect();
    parts.join("; ")
}

fn rows(section: &Value) -> &[Value] {
    section["rows"].as_array().map_or(&[], Vec::as_slice)
}

/// Renders a cell itself (column, row), or leaves it to [`cell`].
type Special<'a> = &'a dyn Fn(&str, &Map<String, Value>) -> Option<String>;

/// A table of every column of the rows (in the query's order), with
/// `special` cells rendered by their own function.
fn table(out: &mut String, rows: &[Value], special: Special<'_>) {
    let Some(first) = rows.first().and_then(Value::as_object) else {
        out.push_str("<p class=\"none\">None in the window.</p>\n");
        return;
    };
    out.push_str("<table><thead><tr>");
    for k in first.keys() {
        let _ = write!(out, "<th>{}</th>", esc(&k.replace('_', " ")));
    }
    out.push_str("</tr></thead><tbody>\n");
    for r in rows.iter().filter_map(Value::as_object) {
        out.push_str("<tr>");
        for (k, v) in r {
            let c = special(k, r).unwrap_or_else(|| cell(v));
            let class = if WRAP.contains(&k.as_str()) {
                " class=\"wrap\""
            } else {
                ""
            };
            let _ = write!(out, "<td{class}>{c}</td>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

/// A bandwidth row over the threshold (ClickHouse writes the flag as 0/1).
fn exceeds(r: &Value) -> bool {
    r["exceeds"] == 1 || r["exceeds"] == true
}

fn num(v: &Value) -> f64 {
    match v {
        Value::Number(n) => n.as_f64().unwrap_or(0.0),
        Value::String(s) => s.parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// Hours reporting per sensor, as bars against the window's hours.
fn coverage_chart(out: &mut String, rows: &[Value], hours: f64) {
    if rows.is_empty() || hours <= 0.0 {
        return;
    }
    let (w, bar, gap, label) = (640.0, 16.0, 8.0, 150.0);
    let h = rows.len() as f64 * (bar + gap) + 24.0;
    let _ = write!(
        out,
        "<svg width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"hours with reports per sensor\">"
    );
    for (i, r) in rows.iter().enumerate() {
        let y = i as f64 * (bar + gap) + 4.0;
        let share = (num(&r["hours_reporting"]) / hours).clamp(0.0, 1.0);
        let len = (w - label - 60.0) * share;
        let _ = write!(
            out,
            "<text x=\"0\" y=\"{:.1}\">{}</text>\
             <rect x=\"{label}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar}\" fill=\"#eaeded\"/>\
             <rect x=\"{label}\" y=\"{y:.1}\" width=\"{len:.1}\" height=\"{bar}\" fill=\"#1f4e79\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\">{:.0} %</text>",
            y + 12.0,
            esc(r["sensor_id"].as_str().unwrap_or("")),
            w - label - 60.0,
            w - 52.0,
            y + 12.0,
            share * 100.0
        );
    }
    out.push_str("</svg>\n");
}

/// Bytes per hour, one line per zone, with the threshold dashed.
fn bandwidth_chart(out: &mut String, rows: &[Value], since: i64, until: i64, threshold: f64) {
    let mut zones: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in rows {
        let at = r["hour"].as_str().and_then(parse_hour).unwrap_or(since) as f64;
        zones
            .entry(r["zone"].as_str().unwrap_or("").to_string())
            .or_default()
            .push((at, num(&r["bytes"])));
    }
    if zones.is_empty() {
        return;
    }
    // Scaled to the traffic; the threshold is drawn only when it is in
    // range (the text above the chart gives it anyway).
    let max = zones.values().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let (w, h, left, bottom) = (720.0, 220.0, 60.0, 24.0);
    let span = (until - since).max(1) as f64;
    let x = |t: f64| left + (t - since as f64) / span * (w - left - 110.0);
    let y = |b: f64| (h - bottom) - b / max * (h - bottom - 10.0);
    let colors = [
        "#1f4e79", "#b03a2e", "#1e8449", "#b9770e", "#6c3483", "#117864", "#566573",
    ];
    let _ = write!(
        out,
        "<svg width=\"{w}\" height=\"{h}\" role=\"img\" aria-label=\"bytes per zone and hour\">\
         <line x1=\"{left}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"#566573\"/>\
         <line x1=\"{left}\" y1=\"10\" x2=\"{left}\" y2=\"{0}\" stroke=\"#566573\"/>\
         <text x=\"0\" y=\"14\">{2}</text><text x=\"0\" y=\"{0}\">0</text>",
        h - bottom,
        w - 110.0,
        esc(&bytes_text(max)),
    );
    let ty = y(threshold);
    if threshold <= max {
        let _ = write!(
        out,
        "<line x1=\"{left}\" y1=\"{ty:.1}\" x2=\"{:.1}\" y2=\"{ty:.1}\" stroke=\"#b03a2e\" stroke-dasharray=\"4 3\"/>\
         <text x=\"{:.1}\" y=\"{:.1}\">threshold</text>",
            w - 110.0,
            w - 105.0,
            ty + 3.0
        );
    }
    for (i, (zone, points)) in zones.iter().enumerate() {
        let color = colors[i % colors.len()];
        let path: Vec<String> = points
            .iter()
            .map(|(t, b)| format!("{:.1},{:.1}", x(*t), y(*b)))
            .collect();
        let _ = write!(
            out,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" style=\"fill:{color}\">{}</text>",
            path.join(" "),
            w - 100.0,
            24.0 + i as f64 * 14.0,
            esc(zone)
        );
    }
    out.push_str("</svg>\n");
}

/// `YYYY-MM-DD hh:mm:ss` (ClickHouse's DateTime in JSON) as Unix seconds.
fn parse_hour(s: &str) -> Option<i64> {
    crate::query::parse_time(s, 0).ok()
}

fn bytes_text(b: f64) -> String {
    match b {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.1} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.1} kB", b / 1e3),
        b => format!("{b:.0} B"),
    }
}

fn date(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .map(|d| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                d.year(),
                d.month() as u8,
                d.day(),
                d.hour(),
                d.minute()
            )
        })
        .unwrap_or_else(|_| t.to_string())
}

/// The whole page.
pub fn page(report: &Value) -> String {
    let s = &report["sections"];
    let vessel = report["vessel"].as_str().unwrap_or("");
    let (since, until) = (
        report["since"].as_i64().unwrap_or(0),
        report["until"].as_i64().unwrap_or(0),
    );
    let threshold = num(&report["zone_hour_bytes"]);
    let q = |key: &str| s[key]["query"].as_str().unwrap_or("").to_string();
    let count =
        |key: &str, pred: &dyn Fn(&Value) -> bool| rows(&s[key]).iter().filter(|r| pred(r)).count();
    let mut out = String::with_capacity(64 * 1024);
    let _ = writeln!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>E26 cyber resilience evidence: {v}</title><style>{STYLE}</style></head><body>\n\
         <h1>Cyber resilience evidence (IACS UR E26): {v}</h1>\n\
         <p class=\"meta\">Window {} to {}. Generated {} by tidewatch from passive monitoring.</p>",
        date(since),
        date(until),
        date(report["generated_at"].as_i64().unwrap_or(0)),
        v = esc(vessel),
    );

    // Summary: each figure names its query.
    let cards: Vec<(usize, &str, String)> = vec![
        (count("sensors", &|_| true), "sensors", q("sensors")),
        (
            count("inventory", &|_| true),
            "assets observed",
            q("inventory"),
        ),
        (
            count("inventory", &|r| {
                !r["product"].as_str().unwrap_or("").is_empty()
            }),
            "assets that identified themselves",
            q("inventory"),
        ),
        (
            count("crossings", &|r| r["allowed"] == false),
            "zone crossings no conduit allows",
            q("crossings"),
        ),
        (
            count("remote_access", &|_| true),
            "remote-access sessions",
            q("remote_access"),
        ),
        (
            count("bridge_450", &|_| true),
            "61162-450 findings",
            q("bridge_450"),
        ),
        (
            count("bandwidth", &exceeds),
            "zone-hours over the threshold",
            q("bandwidth"),
        ),
        (
            count("alarms", &|r| r["state"] == "open"),
            "alarms still open",
            q("alarms"),
        ),
    ];
    out.push_str("<div class=\"summary\">\n");
    for (n, what, id) in cards {
        let _ = writeln!(
            out,
            "<div class=\"card\"><b>{n}</b>{} <span class=\"src\">(<a href=\"#{id}\">{id}</a>)</span></div>",
            esc(what)
        );
    }
    out.push_str("</div>\n");

    let window_hours = ((until - since) as f64 / 3600.0).ceil();
    for key in s
        .as_object()
        .map(|m| m.keys().cloned().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        let sec = &s[&key];
        let id = sec["query"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            "<section id=\"{key}\"><h2>{}</h2><p class=\"about\">{}</p>\
             <p class=\"src\">Source: <a href=\"#{id}\">{id}</a></p>",
            esc(sec["title"].as_str().unwrap_or("")),
            esc(sec["about"].as_str().unwrap_or("")),
        );
        let r = rows(sec);
        match key.as_str() {
            "coverage" => {
                coverage_chart(&mut out, r, window_hours);
                let reporting: Vec<&str> =
                    r.iter().filter_map(|x| x["sensor_id"].as_str()).collect();
                for sensor in rows(&s["sensors"])
                    .iter()
                    .filter_map(|x| x["sensor_id"].as_str())
                {
                    if !reporting.contains(&sensor) {
                        let _ = writeln!(
                            out,
                            "<p class=\"bad\">{}: no status report in the window.</p>",
                            esc(sensor)
                        );
                    }
                }
                table(&mut out, r, &|_, _| None);
            }
            "crossings" => table(&mut out, r, &|k, row| match k {
                "allowed" => Some(if row[k] == true {
                    "<span class=\"ok\">allowed</span>".into()
                } else {
                    "<span class=\"bad\">not allowed</span>".into()
                }),
                "conduit" if row[k].is_null() => Some("none".into()),
                "conduit" => Some(conduits_text(&format!("[{}]", row[k]))),
                _ => None,
            }),
            "bandwidth" => {
                bandwidth_chart(&mut out, r, since, until, threshold);
                let over: Vec<Value> = r.iter().filter(|x| exceeds(x)).cloned().collect();
                let _ = writeln!(
                    out,
                    "<p>Threshold {} per zone and hour; {} zone-hours measured, {} over it:</p>",
                    esc(&bytes_text(threshold)),
                    r.len(),
                    over.len()
                );
                table(&mut out, &over, &|_, _| None);
            }
            "sensors" => table(&mut out, r, &|k, row| {
                (k == "conduits").then(|| conduits_text(row[k].as_str().unwrap_or("")))
            }),
            _ => table(&mut out, r, &|_, _| None),
        }
        out.push_str("</section>\n");
    }

    out.push_str(
        "<section id=\"appendix\"><h2>Appendix: the queries</h2>\
         <p class=\"about\">Every figure above comes from one of these queries, as run (values \
         filled in), against the tidewatch database; paste one into clickhouse-client to run it \
         again.</p>\n",
    );
    for qy in report["queries"].as_array().into_iter().flatten() {
        let id = qy["id"].as_str().unwrap_or("");
        let _ = writeln!(
            out,
            "<h3 id=\"{id}\">{id}: {}</h3><pre>{}</pre>",
            esc(qy["name"].as_str().unwrap_or("")),
            esc(qy["sql"].as_str().unwrap_or(""))
        );
    }
    out.push_str("</section>\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_and_empty_is_unknown() {
        assert_eq!(esc("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
        assert!(cell(&Value::String(String::new())).contains("unknown"));
        assert_eq!(cell(&serde_json::json!(["ssh", "<b>"])), "ssh, &lt;b&gt;");
    }
}
