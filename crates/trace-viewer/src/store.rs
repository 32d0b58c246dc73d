//! Recent traces in bounded memory: at most `max_traces` traces (the least recently
//! updated one goes first) and `max_spans_per_trace` spans each (later ones are counted,
//! not kept).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::model::{Span, ORDER_ID_ATTRIBUTE};

pub struct Store {
    max_traces: usize,
    max_spans_per_trace: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    traces: HashMap<String, Trace>,
    /// Bumped on every update: orders traces by recency without trusting clocks.
    updates: u64,
}

struct Trace {
    spans: HashMap<String, Span>,
    dropped_spans: u64,
    last_update: u64,
}

/// One line of the trace list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    pub root_name: String,
    pub services: Vec<String>,
    pub span_count: usize,
    pub error_count: usize,
    pub start_unix_nano: u64,
    pub duration_ms: f64,
    pub order_ids: Vec<String>,
    pub dropped_spans: u64,
}

/// One trace's spans, sorted by start time (also what the `trace` command reads back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceDetail {
    pub trace_id: String,
    pub spans: Vec<Span>,
    #[serde(default)]
    pub dropped_spans: u64,
}

impl Store {
    pub fn new(max_traces: usize, max_spans_per_trace: usize) -> Store {
        Store {
            max_traces: max_traces.max(1),
            max_spans_per_trace: max_spans_per_trace.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How many traces are kept at most.
    pub fn max_traces(&self) -> usize {
        self.max_traces
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn insert(&self, spans: Vec<Span>) {
        let mut inner = self.inner();
        for span in spans {
            inner.updates += 1;
            let now = inner.updates;
            if !inner.traces.contains_key(&span.trace_id) {
                if inner.traces.len() >= self.max_traces {
                    inner.evict_least_recently_updated();
                }
                let trace = Trace {
                    spans: HashMap::new(),
                    dropped_spans: 0,
                    last_update: now,
                };
                inner.traces.insert(span.trace_id.clone(), trace);
            }
            let Some(trace) = inner.traces.get_mut(&span.trace_id) else {
                continue;
            };
            trace.last_update = now;
            // A re-sent span replaces the old copy and does not count against the limit.
            if trace.spans.len() >= self.max_spans_per_trace
                && !trace.spans.contains_key(&span.span_id)
            {
                trace.dropped_spans += 1;
            } else {
                trace.spans.insert(span.span_id.clone(), span);
            }
        }
    }

    /// Every trace, most recently updated first.
    pub fn summaries(&self) -> Vec<TraceSummary> {
        let inner = self.inner();
        let mut traces: Vec<(&String, &Trace)> = inner.traces.iter().collect();
        traces.sort_by_key(|(_, trace)| std::cmp::Reverse(trace.last_update));
        traces
            .into_iter()
            .map(|(id, trace)| summarise(id, trace))
            .collect()
    }

    pub fn trace(&self, trace_id: &str) -> Option<TraceDetail> {
        let inner = self.inner();
        let trace = inner.traces.get(trace_id)?;
        Some(TraceDetail {
            trace_id: trace_id.to_owned(),
            spans: sorted_spans(trace).into_iter().cloned().collect(),
            dropped_spans: trace.dropped_spans,
        })
    }

    /// Ids of the traces with a span whose attribute `key` reads `value`, newest first.
    pub fn search(&self, key: &str, value: &str) -> Vec<String> {
        let inner = self.inner();
        let mut found: Vec<(&String, &Trace)> = inner
            .traces
            .iter()
            .filter(|(_, trace)| {
                trace
                    .spans
                    .values()
                    .any(|span| span.attribute_text(key).as_deref() == Some(value))
            })
            .collect();
        found.sort_by_key(|(_, trace)| std::cmp::Reverse(trace.last_update));
        found.into_iter().map(|(id, _)| id.clone()).collect()
    }
}

impl Inner {
    fn evict_least_recently_updated(&mut self) {
        let oldest = self
            .traces
            .iter()
            .min_by_key(|(_, trace)| trace.last_update)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.traces.remove(&id);
        }
    }
}

/// Sorted by start time; ties by span id so pages do not reshuffle between loads.
fn sorted_spans(trace: &Trace) -> Vec<&Span> {
    let mut spans: Vec<&Span> = trace.spans.values().collect();
    spans.sort_by(|a, b| (a.start_unix_nano, &a.span_id).cmp(&(b.start_unix_nano, &b.span_id)));
    spans
}

fn summarise(trace_id: &str, trace: &Trace) -> TraceSummary {
    let spans = sorted_spans(trace);
    let start = spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0);
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    let order_ids: BTreeSet<String> = spans
        .iter()
        .filter_map(|s| s.attribute_text(ORDER_ID_ATTRIBUTE))
        .collect();
    TraceSummary {
        trace_id: trace_id.to_owned(),
        root_name: root_name(&spans),
        services: services.into_iter().map(str::to_owned).collect(),
        span_count: spans.len(),
        error_count: spans.iter().filter(|s| s.is_error()).count(),
        start_unix_nano: start,
        duration_ms: crate::model::nanos_to_ms(start, end),
        order_ids: order_ids.into_iter().collect(),
        dropped_spans: trace.dropped_spans,
    }
}

/// The first true root (no parent); failing that, the first span whose parent has not
/// arrived (yet); failing that (a cycle), the first span.
fn root_name(spans_by_start: &[&Span]) -> String {
    let ids: HashSet<&str> = spans_by_start.iter().map(|s| s.span_id.as_str()).collect();
    spans_by_start
        .iter()
        .find(|s| s.parent_span_id.is_empty())
        .or_else(|| {
            spans_by_start
                .iter()
                .find(|s| !ids.contains(s.parent_span_id.as_str()))
        })
        .or(spans_by_start.first())
        .copied()
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::{SpanKind, Status, StatusCode};
    use serde_json::{Map, Value};

    /// A span of `trace` starting `start_ms` after an arbitrary epoch, lasting `ms`.
    pub(crate) fn span(
        trace: &str,
        id: &str,
        parent: &str,
        name: &str,
        start_ms: u64,
        ms: u64,
    ) -> Span {
        let start = 1_700_000_000_000_000_000 + start_ms * 1_000_000;
        Span {
            trace_id: trace.to_owned(),
            span_id: id.to_owned(),
            parent_span_id: parent.to_owned(),
            name: name.to_owned(),
            kind: SpanKind::Internal,
            service: "checkout".to_owned(),
            scope: "test".to_owned(),
            start_unix_nano: start,
            end_unix_nano: start + ms * 1_000_000,
            duration_ms: ms as f64,
            status: Status {
                code: StatusCode::Unset,
                message: String::new(),
            },
            attributes: Map::new(),
            events: Vec::new(),
            links: Vec::new(),
        }
    }

    pub(crate) fn with_attribute(mut span: Span, key: &str, value: Value) -> Span {
        span.attributes.insert(key.to_owned(), value);
        span
    }

    #[test]
    fn evicts_the_least_recently_updated_trace() {
        let store = Store::new(2, 10);
        store.insert(vec![span("t1", "a", "", "one", 0, 1)]);
        store.insert(vec![span("t2", "a", "", "two", 0, 1)]);
        // t1 gets a new span, so t2 is now the least recently updated.
        store.insert(vec![span("t1", "b", "a", "one child", 0, 1)]);
        store.insert(vec![span("t3", "a", "", "three", 0, 1)]);
        let ids: Vec<String> = store.summaries().into_iter().map(|s| s.trace_id).collect();
        assert_eq!(ids, ["t3", "t1"]);
        assert!(store.trace("t2").is_none());
        assert_eq!(store.trace("t1").unwrap().spans.len(), 2);
    }

    #[test]
    fn bounds_spans_per_trace_counting_dropped_and_replacing_duplicates() {
        let store = Store::new(10, 2);
        store.insert(vec![
            span("t", "a", "", "root", 0, 10),
            span("t", "b", "a", "first", 1, 1),
            span("t", "c", "a", "dropped", 2, 1),
            span("t", "d", "a", "dropped too", 3, 1),
        ]);
        // A duplicate span id replaces the stored span even when the trace is full.
        store.insert(vec![span("t", "b", "a", "first, resent", 1, 2)]);
        let trace = store.trace("t").unwrap();
        let names: Vec<&str> = trace.spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["root", "first, resent"]);
        assert_eq!(trace.dropped_spans, 2);
        assert_eq!(store.summaries()[0].dropped_spans, 2);
    }

    #[test]
    fn summary_and_search() {
        let store = Store::new(10, 10);
        let mut failed = span("t", "c", "a", "send email", 5, 20);
        failed.status.code = StatusCode::Error;
        failed.service = "fulfilment".to_owned();
        store.insert(vec![
            with_attribute(
                span("t", "b", "a", "reserve", 2, 3),
                ORDER_ID_ATTRIBUTE,
                "ord_1".into(),
            ),
            failed,
            with_attribute(
                span("t", "a", "", "POST /api/orders", 0, 30),
                "http.status",
                202.into(),
            ),
        ]);
        store.insert(vec![span("other", "a", "", "GET /", 0, 1)]);
        let summary = store
            .summaries()
            .into_iter()
            .find(|s| s.trace_id == "t")
            .unwrap();
        assert_eq!(summary.root_name, "POST /api/orders");
        assert_eq!(summary.services, ["checkout", "fulfilment"]);
        assert_eq!((summary.span_count, summary.error_count), (3, 1));
        assert_eq!(summary.duration_ms, 30.0);
        assert_eq!(summary.order_ids, ["ord_1"]);
        assert_eq!(store.search(ORDER_ID_ATTRIBUTE, "ord_1"), ["t"]);
        assert_eq!(store.search("http.status", "202"), ["t"]);
        assert!(store.search(ORDER_ID_ATTRIBUTE, "ord_2").is_empty());
        let names: Vec<String> = store
            .trace("t")
            .unwrap()
            .spans
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["POST /api/orders", "reserve", "send email"]);
    }
}
