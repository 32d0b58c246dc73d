//! A trace as text for the terminal: one line per span in tree order, with durations,
//! offsets and a bar drawn to the scale of the whole trace.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::model::ORDER_ID_ATTRIBUTE;
use crate::store::TraceDetail;
use crate::tree::{tree_order, Window};

/// Columns of the bar that stands for the whole trace.
pub const BAR_WIDTH: usize = 40;

pub fn render(trace: &TraceDetail) -> String {
    let spans = &trace.spans;
    let window = Window::of(spans);
    let errors = spans.iter().filter(|s| s.is_error()).count();
    let orders: BTreeSet<String> = spans
        .iter()
        .filter_map(|s| s.attribute_text(ORDER_ID_ATTRIBUTE))
        .collect();

    let mut out = format!(
        "trace {}: {} span{}, {} error{}, {:.1} ms",
        printable(&trace.trace_id),
        spans.len(),
        plural(spans.len()),
        errors,
        plural(errors),
        window.duration_ms(),
    );
    if !orders.is_empty() {
        let orders: Vec<String> = orders.iter().map(|o| printable(o)).collect();
        let _ = write!(out, ", order {}", orders.join(", "));
    }
    if trace.dropped_spans > 0 {
        let _ = write!(
            out,
            " ({} spans dropped: over the limit)",
            trace.dropped_spans
        );
    }
    out.push('\n');

    let rows = tree_order(spans);
    let labels: Vec<String> = rows
        .iter()
        .map(|row| {
            format!(
                "{}{}{} [{}]",
                "  ".repeat(row.depth),
                printable(&row.span.name),
                if row.parent_missing {
                    " (parent not received)"
                } else {
                    ""
                },
                printable(&row.span.service),
            )
        })
        .collect();
    let width = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    for (row, label) in rows.iter().zip(&labels) {
        let span = row.span;
        let offset = format!("+{:.1} ms", window.offset_ms(span.start_unix_nano));
        let _ = write!(
            out,
            "{label:<width$}  {:>9.1} ms  {offset:>11}  |{}|",
            span.duration_ms,
            bar(window.fractions(span)),
        );
        if span.is_error() {
            let message = match span.status.message.as_str() {
                "" => "(no status message)".to_owned(),
                message => printable(message),
            };
            let _ = write!(out, " ✗ ERROR: {message}");
        }
        out.push('\n');
    }
    out
}

/// `#` where the span runs; at least one column, so instant spans stay visible.
fn bar((start, length): (f64, f64)) -> String {
    let width = BAR_WIDTH as f64;
    let first = ((start * width).floor() as usize).min(BAR_WIDTH - 1);
    let last = (((start + length) * width).ceil() as usize).clamp(first + 1, BAR_WIDTH);
    (0..BAR_WIDTH)
        .map(|col| {
            if (first..last).contains(&col) {
                '#'
            } else {
                ' '
            }
        })
        .collect()
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Span text can hold anything: control characters (terminal escapes) are shown escaped.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StatusCode;
    use crate::store::tests::{span, with_attribute};

    fn trace() -> TraceDetail {
        let mut failed = span("t", "c", "b", "send email", 50, 25);
        failed.status.code = StatusCode::Error;
        failed.status.message = "domain not verified".to_owned();
        failed.service = "fulfilment".to_owned();
        let mut orphan = span("t", "o", "gone", "late export", 90, 10);
        orphan.service = "devmail".to_owned();
        TraceDetail {
            trace_id: "0af7651916cd43dd8448eb211c80319c".to_owned(),
            spans: vec![
                span("t", "a", "", "POST /api/orders", 0, 100),
                with_attribute(
                    span("t", "b", "a", "fulfil", 40, 50),
                    ORDER_ID_ATTRIBUTE,
                    "ord_42".into(),
                ),
                failed,
                orphan,
            ],
            dropped_spans: 0,
        }
    }

    #[test]
    fn waterfall_lines() {
        let text = render(&trace());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "trace 0af7651916cd43dd8448eb211c80319c: 4 spans, 1 error, 100.0 ms, order ord_42"
        );
        let bar = |from: usize, to: usize| -> String {
            (0..BAR_WIDTH)
                .map(|c| if c >= from && c < to { '#' } else { ' ' })
                .collect()
        };
        let expected = [
            format!("POST /api/orders [checkout]                      100.0 ms      +0.0 ms  |{}|", bar(0, 40)),
            format!("  fulfil [checkout]                               50.0 ms     +40.0 ms  |{}|", bar(16, 36)),
            format!("    send email [fulfilment]                       25.0 ms     +50.0 ms  |{}| ✗ ERROR: domain not verified", bar(20, 30)),
            format!("late export (parent not received) [devmail]       10.0 ms     +90.0 ms  |{}|", bar(36, 40)),
        ];
        assert_eq!(&lines[1..], expected);
    }

    #[test]
    fn instant_spans_get_one_column_and_escapes_are_neutralised() {
        let mut trace = trace();
        trace.spans.truncate(1);
        trace.spans[0].name = "evil\u{1b}[31m".to_owned();
        trace.spans[0].end_unix_nano = trace.spans[0].start_unix_nano;
        trace.spans[0].duration_ms = 0.0;
        let text = render(&trace);
        assert!(text.contains("evil\\u{1b}[31m [checkout]"), "{text}");
        assert!(
            text.contains(&format!("|#{}|", " ".repeat(BAR_WIDTH - 1))),
            "{text}"
        );
    }
}
