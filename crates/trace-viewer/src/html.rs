//! Server-rendered pages: the list of recent traces and a Jaeger-like timeline of one.
//! No scripts and nothing fetched from elsewhere, so they work offline; span details
//! open with `<details>`, which the keyboard can use too. Every string that came in a
//! span is escaped.

use std::collections::BTreeSet;
use std::fmt::Write;

use serde_json::{Map, Value};

use crate::model::{value_text, Span, StatusCode, ORDER_ID_ATTRIBUTE};
use crate::store::{TraceDetail, TraceSummary};
use crate::tree::{tree_order, Window};

/// Failed spans, whatever their service.
pub const ERROR_RED: &str = "#d32f2f";
/// Service colours: distinct from each other and from the error red.
const SERVICE_COLOURS: [&str; 8] = [
    "#1976d2", "#388e3c", "#7b1fa2", "#f57c00", "#0097a7", "#5d4037", "#303f9f", "#827717",
];

const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}\
a{color:#1565c0}code{font-size:.9em}\
h1{font-size:1.4rem;margin:.2rem 0}.meta{color:#555}\
table{border-collapse:collapse}th,td{text-align:left;padding:.3rem .6rem;border-bottom:1px solid #e0e0e0;vertical-align:top}\
td.num{text-align:right}.errors{font-weight:bold}.has-errors{color:#d32f2f}\
.swatch{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin:0 .25em 0 .6em;vertical-align:-.05em}\
.timeline{margin-top:1rem;border-top:1px solid #ccc}\
.ruler,summary{display:grid;grid-template-columns:minmax(18rem,40%) 1fr;gap:.5rem;align-items:center}\
.ruler{font-size:.8em;color:#666;border-bottom:1px solid #ccc;padding:.2rem 0}\
.track{position:relative;height:1.1rem}\
.ruler .track span{position:absolute;transform:translateX(-50%);white-space:nowrap}\
.ruler .track span:first-child{transform:none}.ruler .track span:last-child{transform:translateX(-100%)}\
details.span{border-bottom:1px solid #eee}\
summary{cursor:pointer;list-style:none;padding:.15rem 0}summary::-webkit-details-marker{display:none}\
summary:hover,summary:focus{background:#f3f6fb;outline:none}\
summary:focus-visible{outline:2px solid #1565c0}\
.label{white-space:nowrap;overflow:hidden;text-overflow:ellipsis}\
.label::before{content:'\\25B8  ';color:#888}details[open]>summary .label::before{content:'\\25BE  '}\
.service{color:#666;font-size:.85em}.duration{color:#444;font-size:.85em}\
.bar{position:absolute;top:.2rem;height:.7rem;min-width:2px;border-radius:2px}\
details.error>summary{background:#fdecea}\
.error .span-name,.error .status-message{color:#d32f2f;font-weight:bold}\
.error .bar{background:#d32f2f}\
.detail{padding:.4rem 1rem .8rem 2rem;font-size:.9em}\
.detail h3{font-size:.95em;margin:.8rem 0 .3rem}\
.detail table td:first-child{color:#555;white-space:nowrap}\
.detail td{font-family:ui-monospace,monospace;word-break:break-all}\
ul.events{margin:0;padding-left:1.2rem}";

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
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

fn page(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <title>{}</title>{head_extra}<style>{STYLE}</style></head><body>{body}</body></html>",
        escape(title)
    )
}

pub fn not_found(message: &str) -> String {
    page(
        "Not found",
        "",
        &format!(
            "<h1>Not found</h1><p>{}</p><p><a href=\"/\">All traces</a></p>",
            escape(message)
        ),
    )
}

/// The recent traces, newest first; reloads itself every 5 seconds.
pub fn index(traces: &[TraceSummary]) -> String {
    let mut body = format!(
        "<h1>Traces</h1><p class=meta>{} recent trace{} (newest first) &middot; \
         OTLP/HTTP receiver at <code>/v1/traces</code> &middot; JSON at \
         <a href=\"/api/traces\">/api/traces</a></p>",
        traces.len(),
        if traces.len() == 1 { "" } else { "s" }
    );
    if traces.is_empty() {
        body.push_str(
            "<p>No traces yet. Point an OTLP/HTTP exporter here, e.g. \
             <code>OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318</code>.</p>",
        );
        return page("Traces", "<meta http-equiv=refresh content=5>", &body);
    }
    body.push_str(
        "<table><thead><tr><th>Started</th><th>Root span</th><th>Services</th><th>Spans</th>\
         <th>Errors</th><th>Duration</th><th>Orders</th></tr></thead><tbody>",
    );
    for t in traces {
        let href = format!("/traces/{}", escape(&t.trace_id));
        let _ = write!(
            body,
            "<tr><td><a href=\"{href}\">{}</a></td><td><a href=\"{href}\">{}</a></td><td>{}</td>\
             <td class=num>{}</td><td class=\"num errors{}\">{}</td><td class=num>{}</td><td>{}</td></tr>",
            escape(&utc_time(t.start_unix_nano)),
            escape(&t.root_name),
            escape(&t.services.join(", ")),
            t.span_count,
            if t.error_count > 0 { " has-errors" } else { "" },
            t.error_count,
            format_ms(t.duration_ms),
            escape(&t.order_ids.join(", ")),
        );
    }
    body.push_str("</tbody></table>");
    page("Traces", "<meta http-equiv=refresh content=5>", &body)
}

/// One trace as a timeline: a row per span in tree order, bars to scale.
pub fn trace(detail: &TraceDetail) -> String {
    let spans = &detail.spans;
    let window = Window::of(spans);
    let rows = tree_order(spans);
    let errors = spans.iter().filter(|s| s.is_error()).count();
    let services: Vec<&str> = spans
        .iter()
        .map(|s| s.service.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let colour_of = |service: &str| {
        let i = services.iter().position(|s| *s == service).unwrap_or(0);
        SERVICE_COLOURS[i % SERVICE_COLOURS.len()]
    };
    let orders: BTreeSet<String> = spans
        .iter()
        .filter_map(|s| s.attribute_text(ORDER_ID_ATTRIBUTE))
        .collect();
    let title = rows
        .first()
        .map_or("(empty trace)", |r| r.span.name.as_str());

    let mut body = format!(
        "<p><a href=\"/\">&larr; All traces</a></p><h1>{}</h1>\
         <p class=meta>Trace <code>{}</code> &middot; {} &middot; {} span{} &middot; \
         <span class=\"errors{}\">{} error{}</span> &middot; started {}</p><p class=meta>Services:",
        escape(title),
        escape(&detail.trace_id),
        format_ms(window.duration_ms()),
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        if errors > 0 { " has-errors" } else { "" },
        errors,
        if errors == 1 { "" } else { "s" },
        escape(&utc_time(window.start)),
    );
    for service in &services {
        let _ = write!(
            body,
            "<span class=swatch style=\"background:{}\"></span>{}",
            colour_of(service),
            escape(service)
        );
    }
    if !orders.is_empty() {
        let orders: Vec<String> = orders.iter().map(|o| escape(o)).collect();
        let _ = write!(body, " &middot; Order: <code>{}</code>", orders.join(", "));
    }
    body.push_str("</p>");
    if detail.dropped_spans > 0 {
        let _ = write!(
            body,
            "<p class=has-errors>{} more span(s) of this trace were dropped: over the per-trace limit.</p>",
            detail.dropped_spans
        );
    }

    body.push_str("<div class=timeline><div class=ruler><div>Span</div><div class=track>");
    for quarter in 0..=4 {
        let _ = write!(
            body,
            "<span style=\"left:{}%\">{}</span>",
            quarter * 25,
            format_ms(window.duration_ms() * quarter as f64 / 4.0)
        );
    }
    body.push_str("</div></div>");
    for row in &rows {
        let span = row.span;
        let (start, length) = window.fractions(span);
        let colour = if span.is_error() {
            ERROR_RED
        } else {
            colour_of(&span.service)
        };
        let id = escape(&span.span_id);
        let _ = write!(
            body,
            "<details class=\"span{}\" id=\"span-{id}\"><summary>\
             <div class=label style=\"padding-left:{:.1}rem\">\
             <span class=span-name data-span-id=\"{id}\">{}</span>{} \
             <span class=service>{}</span> <span class=duration>{}</span>{}</div>\
             <div class=track><div class=bar style=\"left:{:.3}%;width:{:.3}%;background:{colour}\" \
             title=\"{}\"></div></div></summary>{}</details>",
            if span.is_error() { " error" } else { "" },
            row.depth as f64 * 1.2,
            escape(&span.name),
            if row.parent_missing {
                " <span class=service>(parent not received)</span>"
            } else {
                ""
            },
            escape(&span.service),
            format_ms(span.duration_ms),
            if span.is_error() {
                format!(
                    " <span class=status-message>&#10007; {}</span>",
                    escape(if span.status.message.is_empty() {
                        "error"
                    } else {
                        &span.status.message
                    })
                )
            } else {
                String::new()
            },
            start * 100.0,
            length * 100.0,
            escape(&format!("{} [{}] {}", span.name, span.service, format_ms(span.duration_ms))),
            span_detail(span, row.parent_missing, &window),
        );
    }
    body.push_str("</div>");
    page(&format!("{title} - trace {}", detail.trace_id), "", &body)
}

/// What a row shows when opened: the span's facts, attributes, events and links.
fn span_detail(span: &Span, parent_missing: bool, window: &Window) -> String {
    let status = match span.status.code {
        StatusCode::Unset => "unset",
        StatusCode::Ok => "ok",
        StatusCode::Error => "error",
    };
    let status = if span.status.message.is_empty() {
        status.to_owned()
    } else {
        format!("{status}: {}", span.status.message)
    };
    let facts: Vec<(&str, String)> = vec![
        ("status", status),
        ("kind", format!("{:?}", span.kind).to_lowercase()),
        ("service", span.service.clone()),
        ("scope", span.scope.clone()),
        ("span id", span.span_id.clone()),
        (
            "parent span id",
            match (span.parent_span_id.as_str(), parent_missing) {
                ("", _) => "none (a root span)".to_owned(),
                (parent, true) => format!("{parent} (not received)"),
                (parent, false) => parent.to_owned(),
            },
        ),
        (
            "start",
            format!(
                "+{} ({})",
                format_ms(window.offset_ms(span.start_unix_nano)),
                utc_time(span.start_unix_nano)
            ),
        ),
        ("duration", format_ms(span.duration_ms)),
    ];
    let mut out = String::from("<div class=detail><table>");
    for (key, value) in facts {
        let _ = write!(out, "<tr><td>{key}</td><td>{}</td></tr>", escape(&value));
    }
    out.push_str("</table>");
    if !span.attributes.is_empty() {
        out.push_str("<h3>Attributes</h3>");
        out.push_str(&attribute_table(&span.attributes));
    }
    if !span.events.is_empty() {
        out.push_str("<h3>Events</h3><ul class=events>");
        for event in &span.events {
            let _ = write!(
                out,
                "<li><b>{}</b> at +{}{}</li>",
                escape(&event.name),
                format_ms(crate::model::nanos_to_ms(
                    span.start_unix_nano,
                    event.time_unix_nano
                )),
                attribute_table(&event.attributes),
            );
        }
        out.push_str("</ul>");
    }
    if !span.links.is_empty() {
        out.push_str("<h3>Links</h3><ul class=events>");
        for link in &span.links {
            let (trace_id, span_id) = (escape(&link.trace_id), escape(&link.span_id));
            let _ = write!(
                out,
                "<li>trace <a href=\"/traces/{trace_id}#span-{span_id}\"><code>{trace_id}</code></a> \
                 span <code>{span_id}</code>{}</li>",
                attribute_table(&link.attributes),
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</div>");
    out
}

fn attribute_table(attributes: &Map<String, Value>) -> String {
    if attributes.is_empty() {
        return String::new();
    }
    let mut out = String::from("<table>");
    for (key, value) in attributes {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(key),
            escape(&value_text(value))
        );
    }
    out.push_str("</table>");
    out
}

/// Sub-millisecond spans (key-value calls) keep their precision; long ones read as seconds.
pub fn format_ms(ms: f64) -> String {
    if ms == 0.0 {
        "0 ms".to_owned()
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else if ms < 1.0 {
        format!("{ms:.3} ms")
    } else {
        format!("{ms:.1} ms")
    }
}

fn utc_time(unix_nano: u64) -> String {
    let seconds = (unix_nano / 1_000_000_000) as i64;
    let nanos = (unix_nano % 1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(seconds, nanos)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::span;
    use crate::store::Store;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape(r#"<script>alert("x&y's")</script>"#),
            "&lt;script&gt;alert(&quot;x&amp;y&#39;s&quot;)&lt;/script&gt;"
        );
    }

    fn hostile_trace() -> TraceDetail {
        let mut root = span("t", "a", "", "<img src=x onerror=alert(1)>", 0, 100);
        root.attributes.insert("q\"".into(), "</td><script>".into());
        root.service = "svc<b>".to_owned();
        let mut failed = span("t", "b", "a", "send email", 50, 25);
        failed.status.code = StatusCode::Error;
        failed.status.message = "refused <because>".to_owned();
        failed.events.push(crate::model::Event {
            name: "exception".to_owned(),
            time_unix_nano: failed.start_unix_nano + 1_000_000,
            attributes: [(
                "exception.message".to_owned(),
                "domain & not verified".into(),
            )]
            .into_iter()
            .collect(),
        });
        TraceDetail {
            trace_id: "t\"><x".to_owned(),
            spans: vec![root, failed],
            dropped_spans: 0,
        }
    }

    #[test]
    fn trace_page_escapes_span_text_and_marks_errors() {
        let html = trace(&hostile_trace());
        for raw in ["<img", "<script>", "<because>", "svc<b>", "t\"><x"] {
            assert!(!html.contains(raw), "{raw} not escaped");
        }
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("refused &lt;because&gt;"));
        assert!(html.contains("domain &amp; not verified"));
        assert!(html.contains("<span class=span-name data-span-id=\"b\">send email</span>"));
        assert!(html.contains("<details class=\"span error\" id=\"span-b\">"));
        assert!(html.contains(&format!("background:{ERROR_RED}")));
        // Root: whole width; the failed child: from 50% for 25%, indented.
        assert!(html.contains("left:0.000%;width:100.000%"));
        assert!(html.contains("left:50.000%;width:25.000%"));
        assert!(html.contains("padding-left:1.2rem"));
    }

    #[test]
    fn index_lists_traces_with_links_and_red_error_counts() {
        let store = Store::new(10, 10);
        store.insert(hostile_trace().spans);
        let html = index(&store.summaries());
        assert!(html.contains("<a href=\"/traces/t\">"));
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(html.contains("<td class=\"num errors has-errors\">1</td>"));
        assert!(!html.contains("<img"));
    }

    #[test]
    fn durations() {
        assert_eq!(format_ms(0.0), "0 ms");
        assert_eq!(format_ms(0.25), "0.250 ms");
        assert_eq!(format_ms(12.34), "12.3 ms");
        assert_eq!(format_ms(1500.0), "1.50 s");
    }
}
