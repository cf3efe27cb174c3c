//! Reading a broker's Prometheus endpoint: one HTTP GET of `/metrics` and
//! a parser for the few families the latency-over-time figures need.
//!
//! A shardmq broker renders each latency histogram per shard as
//! cumulative buckets in seconds (`name_bucket{node="1",shard="0",
//! le="0.005"} 12`, then `le="+Inf"`, `_sum` and `_count`). The parser
//! sums a family over all its label sets except `le` (the shards of one
//! broker), so one broker gives one histogram per family; the difference
//! of two scrapes is what happened between them.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::report::model::HistogramSecond;

/// Largest `/metrics` body read; a larger one is cut there (the families
/// parsed come before the per-partition ones, but nothing depends on it).
pub const BODY_BYTES_MAX: usize = 32 << 20;

/// A histogram family summed over its series: cumulative counts per upper
/// bound (µs), and the `+Inf` count (every observation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CumulativeHistogram {
    /// Observations at or below each bound, bounds ascending.
    pub at_or_below: BTreeMap<u64, u64>,
    /// Observations in all (the `+Inf` bucket).
    pub total: u64,
}

impl CumulativeHistogram {
    /// What was observed between `earlier` and `self` (a later scrape of
    /// the same family): how many, how many above `slow_us` (the largest
    /// bound at or below it decides), and the bound of the highest bucket
    /// any of them fell in (`u64::MAX` above the largest bound, 0 when
    /// none). A counter that went backwards (a restarted server) counts as
    /// no change.
    pub fn since(&self, earlier: &CumulativeHistogram, slow_us: u64) -> HistogramSecond {
        let count = self.total.saturating_sub(earlier.total);
        let delta_at = |bound: u64| {
            self.at_or_below
                .get(&bound)
                .copied()
                .unwrap_or(0)
                .saturating_sub(earlier.at_or_below.get(&bound).copied().unwrap_or(0))
        };
        let fast = self
            .at_or_below
            .range(..=slow_us)
            .next_back()
            .map_or(0, |(&bound, _)| delta_at(bound));
        let max_le_us = if count == 0 {
            0
        } else {
            self.at_or_below
                .keys()
                .copied()
                .find(|&bound| delta_at(bound) >= count)
                .unwrap_or(u64::MAX)
        };
        HistogramSecond {
            count,
            slow: count.saturating_sub(fast),
            max_le_us,
        }
    }
}

/// The families of one scrape that were asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Histogram families by name (without `_bucket`).
    pub histograms: BTreeMap<String, CumulativeHistogram>,
    /// Counter or gauge families by name, summed over their series.
    pub values: BTreeMap<String, f64>,
}

/// Parses the text exposition `text`, keeping the histogram families
/// named in `histograms` and the counter or gauge families in `values`;
/// lines it cannot read are skipped.
pub fn parse(text: &str, histograms: &[&str], values: &[&str]) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = split_sample(line) else {
            continue;
        };
        if let Some(family) = name.strip_suffix("_bucket") {
            if !histograms.contains(&family) {
                continue;
            }
            let (Some(le), Ok(count)) = (label(labels, "le"), value.parse::<f64>()) else {
                continue;
            };
            let count = count as u64;
            let h = scrape.histograms.entry(family.to_owned()).or_default();
            if le == "+Inf" {
                h.total += count;
            } else if let Ok(seconds) = le.parse::<f64>() {
                let bound_us = (seconds * 1e6).round() as u64;
                *h.at_or_below.entry(bound_us).or_default() += count;
            }
        } else if values.contains(&name) {
            if let Ok(v) = value.parse::<f64>() {
                *scrape.values.entry(name.to_owned()).or_default() += v;
            }
        }
    }
    scrape
}

/// `name{labels} value [timestamp]` or `name value`: the name, the text
/// between the braces (empty without) and the value.
fn split_sample(line: &str) -> Option<(&str, &str, &str)> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let (labels, rest) = match rest.strip_prefix('{') {
        Some(inner) => {
            let close = closing_brace(inner)?;
            (&inner[..close], &inner[close + 1..])
        }
        None => ("", rest),
    };
    let value = rest.split_whitespace().next()?;
    (!name.is_empty()).then_some((name, labels, value))
}

/// The index of the `}` ending a label set, skipping quoted values (which
/// may hold braces and escaped quotes).
fn closing_brace(inner: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (true, false, '"') => quoted = false,
            (false, _, '"') => quoted = true,
            (false, _, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The value of label `key` in `a="x",le="0.5"` (unescaped values are
/// enough: bounds hold no escapes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let mut rest = labels;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        let eq = rest.find('=')?;
        let name = rest[..eq].trim();
        let after = rest[eq + 1..].strip_prefix('"')?;
        let end = quoted_end(after)?;
        if name == key {
            return Some(&after[..end]);
        }
        rest = &after[end + 1..];
    }
}

/// The index of the closing quote of a value that began just before `s`.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i),
            _ => {}
        }
    }
    None
}

/// The body of `GET /metrics` on 127.0.0.1:`port`, or `None` when the
/// server does not answer 200 within `timeout` (connect, request and the
/// whole body together).
pub async fn fetch_metrics(port: u16, timeout: Duration) -> Option<String> {
    tokio::time::timeout(timeout, fetch(port)).await.ok()?
}

async fn fetch(port: u16) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    // HTTP/1.0: the server closes the connection after the body, which
    // is how its end is found.
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    let mut limited = (&mut stream).take(BODY_BYTES_MAX as u64);
    limited.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    (status == 200).then(|| body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSYNC: &str = "shardmq_storage_fsync_latency_seconds";

    /// Two shards of one broker, rendered as the broker renders them.
    fn exposition(shard0: [u64; 4], shard1: [u64; 4]) -> String {
        let mut text = format!("# HELP {FSYNC} Sync-round latency.\n# TYPE {FSYNC} histogram\n");
        for (shard, counts) in [(0, shard0), (1, shard1)] {
            for (le, count) in ["0.001", "0.005", "0.01"].iter().zip(counts) {
                text += &format!(
                    "{FSYNC}_bucket{{node=\"1\",shard=\"{shard}\",le=\"{le}\"}} {count}\n"
                );
            }
            text += &format!(
                "{FSYNC}_bucket{{node=\"1\",shard=\"{shard}\",le=\"+Inf\"}} {}\n",
                counts[3]
            );
            text += &format!("{FSYNC}_sum{{node=\"1\",shard=\"{shard}\"}} 0.5\n");
            text += &format!(
                "{FSYNC}_count{{node=\"1\",shard=\"{shard}\"}} {}\n",
                counts[3]
            );
        }
        text += "shardmq_storage_segments_deleted_total{node=\"1\",shard=\"0\"} 3\n";
        text += "shardmq_storage_segments_deleted_total{node=\"1\",shard=\"1\"} 4\n";
        text += "shardmq_partitions{node=\"1\",shard=\"0\"} 9\n";
        text
    }

    #[test]
    fn histograms_are_summed_over_the_shards() {
        let text = exposition([1, 5, 6, 7], [10, 20, 20, 21]);
        let s = parse(&text, &[FSYNC], &["shardmq_storage_segments_deleted_total"]);
        let h = &s.histograms[FSYNC];
        assert_eq!(
            h.at_or_below
                .iter()
                .map(|(&b, &c)| (b, c))
                .collect::<Vec<_>>(),
            vec![(1_000, 11), (5_000, 25), (10_000, 26)]
        );
        assert_eq!(h.total, 28);
        assert_eq!(s.values["shardmq_storage_segments_deleted_total"], 7.0);
        // Families not asked for are left out.
        assert!(!s.values.contains_key("shardmq_partitions"));
        assert_eq!(s.histograms.len(), 1);
    }

    #[test]
    fn the_difference_of_two_scrapes_counts_slow_rounds_and_the_highest_bucket() {
        let before = parse(&exposition([1, 5, 6, 7], [10, 20, 20, 21]), &[FSYNC], &[]);
        // Shard 0: 10 rounds more, 7 of them up to 1 ms, 2 in (1 ms, 5 ms]
        // and 1 in (5 ms, 10 ms]; shard 1: 3 more, one up to 1 ms, one in
        // (1 ms, 5 ms] and one above 10 ms.
        let after = parse(
            &exposition([8, 14, 16, 17], [11, 22, 22, 24]),
            &[FSYNC],
            &[],
        );
        let d = after.histograms[FSYNC].since(&before.histograms[FSYNC], 5_000);
        assert_eq!(d.count, 13);
        assert_eq!(d.slow, 2);
        assert_eq!(d.max_le_us, u64::MAX, "one round above the largest bound");

        // Shard 0: 5 rounds more, none above 5 ms.
        let after = parse(
            &exposition([4, 10, 11, 12], [10, 20, 20, 21]),
            &[FSYNC],
            &[],
        );
        let d = after.histograms[FSYNC].since(&before.histograms[FSYNC], 5_000);
        assert_eq!(d.count, 5);
        assert_eq!(d.slow, 0);
        assert_eq!(d.max_le_us, 5_000);
        // Against a threshold of 1 ms, the 2 in (1 ms, 5 ms] are slow.
        let d = after.histograms[FSYNC].since(&before.histograms[FSYNC], 1_000);
        assert_eq!(d.slow, 2);

        // Nothing new: no rounds and no bucket; a threshold between bounds
        // uses the bound below it.
        let d = before.histograms[FSYNC].since(&before.histograms[FSYNC], 8_000);
        assert_eq!(d.count, 0);
        assert_eq!(d.slow, 0);
        assert_eq!(d.max_le_us, 0);
    }

    #[test]
    fn a_restarted_server_counts_as_no_change() {
        let before = parse(
            &exposition([8, 10, 11, 17], [12, 22, 22, 24]),
            &[FSYNC],
            &[],
        );
        let after = parse(&exposition([0, 0, 0, 0], [0, 0, 0, 0]), &[FSYNC], &[]);
        let d = after.histograms[FSYNC].since(&before.histograms[FSYNC], 5_000);
        assert_eq!((d.count, d.slow, d.max_le_us), (0, 0, 0));
    }

    #[test]
    fn the_brokers_bucket_bounds_parse_to_whole_microseconds() {
        // As the broker prints bound_us / 1e6.
        let mut text = String::new();
        for bound_us in [50u64, 100, 250, 2_500, 10_000_000] {
            let le = bound_us as f64 / 1e6;
            text += &format!("x_bucket{{le=\"{le}\"}} 1\n");
        }
        text += "x_bucket{le=\"+Inf\"} 5\n";
        let s = parse(&text, &["x"], &[]);
        assert_eq!(
            s.histograms["x"]
                .at_or_below
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            vec![50, 100, 250, 2_500, 10_000_000]
        );
    }

    #[test]
    fn odd_lines_are_skipped_and_quoted_labels_read() {
        let text = "\
x_bucket{topic=\"a}b\\\"c\",le=\"0.001\"} 4 1700000000000
x_bucket{le=\"+Inf\",topic=\"a}b\\\"c\"} 6
x_bucket{le=\"0.002\"} not-a-number
x_bucket{le=\"0.003\"
x_bucket{topic=\"t\"} 3
counter 2.5
counter{a=\"1\"} 0.5
   \n";
        let s = parse(text, &["x"], &["counter"]);
        let h = &s.histograms["x"];
        assert_eq!(h.at_or_below.get(&1_000), Some(&4));
        assert_eq!(h.at_or_below.len(), 1);
        assert_eq!(h.total, 6);
        assert_eq!(s.values["counter"], 3.0);
    }

    #[tokio::test]
    async fn fetch_reads_the_body_of_a_200_and_nothing_else() {
        use tokio::net::TcpListener;
        async fn serve_once(listener: &TcpListener, response: &'static str) {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 256];
            let _ = conn.read(&mut request).await.unwrap();
            conn.write_all(response.as_bytes()).await.unwrap();
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let ok = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nx_bucket{le=\"+Inf\"} 1\n";
        let (body, ()) = tokio::join!(
            fetch_metrics(port, Duration::from_secs(5)),
            serve_once(&listener, ok)
        );
        assert_eq!(body.as_deref(), Some("x_bucket{le=\"+Inf\"} 1\n"));
        let missing = "HTTP/1.1 404 Not Found\r\n\r\nnot found\n";
        let (body, ()) = tokio::join!(
            fetch_metrics(port, Duration::from_secs(5)),
            serve_once(&listener, missing)
        );
        assert_eq!(body, None);
        drop(listener);
        assert_eq!(fetch_metrics(port, Duration::from_secs(5)).await, None);
    }
}
