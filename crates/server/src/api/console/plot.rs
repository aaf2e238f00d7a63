//! Plots drawn on the server as SVG, put in the page as they are (no script, no third-party
//! code): horizontal bars for histograms and counts, and a left-to-right graph for lineage.
//! Every text put in the SVG is escaped here, since the page inserts the SVG unescaped.

use std::fmt::Write as _;

/// `text` safe inside SVG markup, text or attribute.
fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// At most `chars` characters of `text`, with an ellipsis when cut.
pub(super) fn clip(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_string();
    }
    let mut clipped: String = text.chars().take(chars.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

/// The most bars one plot draws; the rest are left out (the tables beside list them all).
const MAX_BARS: usize = 30;

/// A horizontal bar chart of `bars` (label, value) titled `title` (also its accessible name),
/// values written beside the bars.
pub fn bars(title: &str, bars: &[(String, f64)]) -> String {
    let shown = &bars[..bars.len().min(MAX_BARS)];
    let largest = shown.iter().map(|(_, value)| *value).fold(0.0_f64, f64::max);
    let (label_width, bar_width, row) = (150.0, 260.0, 20.0);
    let height = row * shown.len() as f64 + 8.0;
    let mut svg = format!(
        r#"<svg class="plot" role="img" aria-label="{title}" viewBox="0 0 {width} {height}" width="{width}" height="{height}"><title>{title}</title>"#,
        title = escape(title),
        width = label_width + bar_width + 70.0,
    );
    for (position, (label, value)) in shown.iter().enumerate() {
        let y = row * position as f64 + 4.0;
        let length = if largest > 0.0 { (value / largest * bar_width).max(1.0) } else { 0.0 };
        let _ = write!(
            svg,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{label}</text><rect x="{label_width}" y="{y}" width="{length:.1}" height="{h}"/><text x="{vx:.1}" y="{ty}">{value}</text>"#,
            lx = label_width - 6.0,
            ty = y + 13.0,
            label = escape(&clip(label, 22)),
            h = row - 6.0,
            vx = label_width + length + 4.0,
            value = number(*value),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A value as a caption: integers as they are, others to about three significant digits,
/// without trailing zeros.
pub fn number(value: f64) -> String {
    if value.abs() >= 100.0 || (value.fract() == 0.0 && value.abs() < 1e15) {
        return format!("{value:.0}");
    }
    let decimals = if value.abs() >= 10.0 { 1 } else { 3 };
    let text = format!("{value:.decimals$}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Titled plots as a page's figures: each SVG marked safe (it escaped its own texts).
pub fn figures(drawn: Vec<(String, String)>) -> Vec<minijinja::Value> {
    drawn
        .into_iter()
        .map(|(title, svg)| minijinja::context! { title => title, svg => minijinja::Value::from_safe_string(svg) })
        .collect()
}

/// A node of a lineage graph: its label and, when it has a page, the page's link.
pub struct Node {
    pub label: String,
    pub href: Option<String>,
}

impl Node {
    /// A node without a page.
    pub fn plain(label: &str) -> Node {
        Node { label: label.to_string(), href: None }
    }
}

/// Lineage as columns of nodes, left to right (data, runs, versions, deployments), every node
/// of a column joined to every node of the next; titled `title`.
pub fn lineage(title: &str, columns: &[Vec<Node>]) -> String {
    let (column_width, node_width, node_height, gap) = (200.0, 170.0, 28.0, 12.0);
    let tallest = columns.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let height = tallest as f64 * (node_height + gap) + gap;
    let width = column_width * columns.len().max(1) as f64;
    let place =
        |column: usize, row: usize| (column as f64 * column_width + 8.0, gap + row as f64 * (node_height + gap));
    let mut svg = format!(
        r#"<svg class="lineage" role="img" aria-label="{title}" viewBox="0 0 {width} {height}" width="{width}" height="{height}"><title>{title}</title>"#,
        title = escape(title),
    );
    for (column, pair) in columns.windows(2).enumerate() {
        for from in 0..pair[0].len() {
            for to in 0..pair[1].len() {
                let (x1, y1) = place(column, from);
                let (x2, y2) = place(column + 1, to);
                let _ = write!(
                    svg,
                    r#"<line x1="{}" y1="{}" x2="{}" y2="{}"/>"#,
                    x1 + node_width,
                    y1 + node_height / 2.0,
                    x2,
                    y2 + node_height / 2.0
                );
            }
        }
    }
    for (column, nodes) in columns.iter().enumerate() {
        for (row, node) in nodes.iter().enumerate() {
            let (x, y) = place(column, row);
            let label = escape(&clip(&node.label, 24));
            let shape = format!(
                r#"<rect x="{x}" y="{y}" width="{node_width}" height="{node_height}" rx="6"/><text x="{}" y="{}">{label}</text>"#,
                x + 8.0,
                y + 18.0
            );
            match &node.href {
                Some(href) => {
                    let _ = write!(svg, r#"<a href="{}">{shape}</a>"#, escape(href));
                }
                None => svg.push_str(&shape),
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

/// A step of a timeline: its label, how long it took and whether it succeeded.
pub struct Span {
    pub label: String,
    pub seconds: f64,
    pub ok: bool,
}

/// A run as a timeline: its steps one after another, each a bar as long as it took (failed
/// ones marked), on one time axis; titled `title`.
pub fn timeline(title: &str, spans: &[Span]) -> String {
    let total: f64 = spans.iter().map(|span| span.seconds.max(0.0)).sum::<f64>().max(0.001);
    let (label_width, axis_width, row) = (150.0, 300.0, 20.0);
    let height = row * spans.len() as f64 + 8.0;
    let mut svg = format!(
        r#"<svg class="plot timeline" role="img" aria-label="{title}" viewBox="0 0 {width} {height}" width="{width}" height="{height}"><title>{title}</title>"#,
        title = escape(title),
        width = label_width + axis_width + 70.0,
    );
    let mut start = 0.0;
    for (position, span) in spans.iter().enumerate() {
        let y = row * position as f64 + 4.0;
        let x = label_width + start / total * axis_width;
        let length = (span.seconds.max(0.0) / total * axis_width).max(2.0);
        let _ = write!(
            svg,
            r#"<text x="{lx}" y="{ty}" text-anchor="end">{label}</text><rect class="{class}" x="{x:.1}" y="{y}" width="{length:.1}" height="{h}"/><text x="{vx:.1}" y="{ty}">{seconds} s</text>"#,
            lx = label_width - 6.0,
            ty = y + 13.0,
            label = escape(&clip(&span.label, 22)),
            class = if span.ok { "ok" } else { "failed" },
            h = row - 6.0,
            vx = x + length + 4.0,
            seconds = number(span.seconds),
        );
        start += span.seconds.max(0.0);
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_escape_what_they_are_given() {
        let drawn = bars("<b>", &[("<script>".to_string(), 3.0), ("a\"b".to_string(), 1.5)]);
        assert!(drawn.contains("&lt;script&gt;") && !drawn.contains("<script>"), "{drawn}");
        assert!(drawn.contains("a&quot;b") && drawn.contains(">3<") && drawn.contains(">1.5<"), "{drawn}");
        assert_eq!(
            (number(19.96), number(0.0030), number(250.4), number(-2.0)),
            ("20".into(), "0.003".into(), "250".into(), "-2".into())
        );
        let node = |label: &str, href: Option<&str>| Node { label: label.to_string(), href: href.map(str::to_string) };
        let graph = lineage(
            "lineage",
            &[vec![node("data@1", Some("/x?a=\"")), node("data@2", None)], vec![node("<run>", None)]],
        );
        assert_eq!(graph.matches("<line").count(), 2, "{graph}");
        assert!(graph.contains("&lt;run&gt;") && graph.contains("/x?a=&quot;"), "{graph}");
    }

    #[test]
    fn long_labels_are_clipped_and_bars_bounded() {
        let many: Vec<(String, f64)> = (0..100).map(|i| (format!("{i}").repeat(30), i as f64)).collect();
        let drawn = bars("many", &many);
        assert_eq!(drawn.matches("<rect").count(), MAX_BARS);
        assert!(drawn.contains('…'));
    }
}
