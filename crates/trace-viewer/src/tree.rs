//! Spans as a tree, flattened in display order: each parent followed by its children
//! (earliest first), which both the waterfall and the HTML timeline draw row by row.

use std::collections::{HashMap, HashSet};

use crate::model::{nanos_to_ms, Span};

pub struct Row<'a> {
    pub span: &'a Span,
    pub depth: usize,
    /// The span names a parent that is not in the trace (not exported, or not yet).
    pub parent_missing: bool,
}

pub fn tree_order(spans: &[Span]) -> Vec<Row<'_>> {
    let index: HashMap<&str, usize> = spans
        .iter()
        .enumerate()
        .map(|(i, s)| (s.span_id.as_str(), i))
        .collect();
    let by_start = |a: &usize, b: &usize| {
        let (a, b) = (&spans[*a], &spans[*b]);
        (a.start_unix_nano, &a.span_id).cmp(&(b.start_unix_nano, &b.span_id))
    };
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match index.get(span.parent_span_id.as_str()) {
            Some(&parent) if parent != i => children.entry(parent).or_default().push(i),
            _ => roots.push(i),
        }
    }
    roots.sort_by(by_start);
    for list in children.values_mut() {
        list.sort_by(by_start);
    }
    // Spans caught in a parent cycle are reachable from no root: they come last, as roots.
    let mut leftovers: Vec<usize> = (0..spans.len()).collect();
    leftovers.sort_by(by_start);

    let mut rows = Vec::with_capacity(spans.len());
    let mut visited = HashSet::new();
    for start in roots.into_iter().chain(leftovers) {
        // Iterative depth-first walk: a 5,000-span chain must not overflow the stack.
        let mut stack = vec![(start, 0)];
        while let Some((i, depth)) = stack.pop() {
            if !visited.insert(i) {
                continue;
            }
            let span = &spans[i];
            rows.push(Row {
                span,
                depth,
                parent_missing: depth == 0
                    && !span.parent_span_id.is_empty()
                    && !index.contains_key(span.parent_span_id.as_str()),
            });
            if let Some(kids) = children.get(&i) {
                stack.extend(kids.iter().rev().map(|&kid| (kid, depth + 1)));
            }
        }
    }
    rows
}

/// The time a trace covers, from its earliest start to its latest end.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    pub fn of(spans: &[Span]) -> Window {
        Window {
            start: spans.iter().map(|s| s.start_unix_nano).min().unwrap_or(0),
            end: spans.iter().map(|s| s.end_unix_nano).max().unwrap_or(0),
        }
    }

    pub fn duration_ms(&self) -> f64 {
        nanos_to_ms(self.start, self.end)
    }

    pub fn offset_ms(&self, time_unix_nano: u64) -> f64 {
        nanos_to_ms(self.start, time_unix_nano)
    }

    /// Where a span sits, as fractions (0..=1) of the trace: (start, length).
    pub fn fractions(&self, span: &Span) -> (f64, f64) {
        let total = self.end.saturating_sub(self.start);
        if total == 0 {
            return (0.0, 0.0);
        }
        let clamp = |t: u64| t.clamp(self.start, self.end) - self.start;
        let start = clamp(span.start_unix_nano);
        let end = clamp(span.end_unix_nano).max(start);
        (
            start as f64 / total as f64,
            (end - start) as f64 / total as f64,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::span;

    fn layout(spans: &[Span]) -> Vec<(String, usize, bool)> {
        tree_order(spans)
            .into_iter()
            .map(|r| (r.span.name.clone(), r.depth, r.parent_missing))
            .collect()
    }

    #[test]
    fn parents_before_children_sorted_by_start() {
        let spans = vec![
            span("t", "c2", "b", "second grandchild", 8, 1),
            span("t", "b", "a", "late child", 5, 5),
            span("t", "a", "", "root", 0, 20),
            span("t", "c1", "b", "first grandchild", 6, 1),
            span("t", "e", "a", "early child", 1, 2),
        ];
        assert_eq!(
            layout(&spans),
            [
                ("root".to_owned(), 0, false),
                ("early child".to_owned(), 1, false),
                ("late child".to_owned(), 1, false),
                ("first grandchild".to_owned(), 2, false),
                ("second grandchild".to_owned(), 2, false),
            ]
        );
    }

    #[test]
    fn orphans_and_cycles_become_roots() {
        let spans = vec![
            span("t", "a", "", "root", 0, 20),
            span("t", "o", "missing", "orphan", 3, 1),
            span("t", "x", "y", "cycle x", 10, 1),
            span("t", "y", "x", "cycle y", 11, 1),
            span("t", "s", "s", "own parent", 12, 1),
        ];
        let rows = layout(&spans);
        assert_eq!(rows.len(), spans.len());
        assert_eq!(rows[0], ("root".to_owned(), 0, false));
        assert_eq!(rows[1], ("orphan".to_owned(), 0, true));
        assert_eq!(rows[2], ("own parent".to_owned(), 0, false));
        assert_eq!(rows[3], ("cycle x".to_owned(), 0, false));
        assert_eq!(rows[4], ("cycle y".to_owned(), 1, false));
    }

    #[test]
    fn deep_chains_do_not_overflow() {
        let spans: Vec<Span> = (0..5000)
            .map(|i| {
                span(
                    "t",
                    &format!("{i}"),
                    &format!("{}", i as i64 - 1),
                    "s",
                    i,
                    1,
                )
            })
            .collect();
        let rows = tree_order(&spans);
        assert_eq!(rows.last().unwrap().depth, 4999);
    }

    #[test]
    fn window_fractions() {
        let spans = vec![
            span("t", "a", "", "root", 0, 100),
            span("t", "b", "a", "b", 25, 50),
        ];
        let window = Window::of(&spans);
        assert_eq!(window.duration_ms(), 100.0);
        assert_eq!(window.fractions(&spans[1]), (0.25, 0.5));
    }
}
