//! `topic compare-replicas`: reads every replica of a partition (follower
//! reads, one consumer per replica) over the offsets all of them have
//! committed, and compares them batch by batch, byte for byte.
//!
//! The range is from the highest log start offset among the replicas up to
//! the lowest high watermark among them, both as each replica's broker
//! reports it (DescribeReplicas): every replica has committed that range,
//! and Raft stores the same batches, with the same bytes, at the same
//! offsets on every replica. So any difference, a batch whose offsets,
//! length or bytes differ, is a real divergence of the logs.
//!
//! The comparison itself ([`compare_streams`]) takes its batches from any
//! [`BatchSource`], so it is tested without a cluster.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Duration;

use shardmq_client::{ClientError, Consumer, FetchedBatch};
use shardmq_schema::batch::RecordBatchView;
use tokio::time::Instant;

/// Long-poll wait of one fetch of a replica. The range read is committed
/// on every replica, so a fetch normally answers at once.
const POLL_WAIT: Duration = Duration::from_millis(200);

/// Longest a replica may go without returning a batch of the range before
/// the comparison gives up on it.
pub const STALL_MAX: Duration = Duration::from_secs(30);

/// Where one replica's batches come from, in offset order.
pub trait BatchSource {
    /// The next batches (possibly none yet).
    fn next_batches(
        &mut self,
    ) -> impl std::future::Future<Output = Result<Vec<FetchedBatch>, ClientError>>;
}

impl BatchSource for Consumer {
    async fn next_batches(&mut self) -> Result<Vec<FetchedBatch>, ClientError> {
        self.poll_batches(POLL_WAIT).await
    }
}

/// How the replicas of one partition compare over `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// Every replica holds the same batches.
    Identical {
        /// Offsets compared.
        records: i64,
    },
    /// The first batch where the replicas differ.
    Differ {
        /// The offset where the difference starts.
        offset: i64,
        /// What each replica holds there.
        detail: String,
    },
    /// A replica could not be read.
    Unreadable {
        /// Its node id.
        node_id: i32,
        /// Why.
        reason: String,
    },
}

/// `offsets B..N, L bytes, crc C` of a batch.
fn describe_batch(batch: &FetchedBatch) -> String {
    let crc = RecordBatchView::parse(&batch.bytes)
        .map(|view| format!("{:#010x}", view.crc()))
        .unwrap_or_else(|_| "unreadable".to_owned());
    format!(
        "offsets {}..{}, {} bytes, crc {crc}",
        batch.base_offset,
        batch.next_offset,
        batch.bytes.len()
    )
}

/// Whether the heads of the replicas are the same batch; if not, the
/// detail of the difference: each replica's batch, and the first byte
/// where batches of the same length differ.
pub fn compare_heads(heads: &[(i32, &FetchedBatch)]) -> Result<(), String> {
    let Some(&(first_node, first)) = heads.first() else {
        return Ok(());
    };
    let same = heads.iter().all(|(_, b)| {
        b.base_offset == first.base_offset
            && b.next_offset == first.next_offset
            && b.bytes == first.bytes
    });
    if same {
        return Ok(());
    }
    let mut detail = String::new();
    for (i, (node_id, batch)) in heads.iter().enumerate() {
        if i > 0 {
            detail.push_str("; ");
        }
        let _ = write!(detail, "node {node_id}: {}", describe_batch(batch));
        if i > 0 && batch.bytes.len() == first.bytes.len() && batch.bytes != first.bytes {
            let at = batch
                .bytes
                .iter()
                .zip(first.bytes.iter())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let _ = write!(detail, " (differs from node {first_node} at byte {at})");
        }
    }
    Err(detail)
}

/// Compares the replicas' batches over `[start, end)`, in lockstep: each
/// source is read until it has a batch at the current offset, the heads
/// are compared, and the offset moves past them. A source that returns
/// nothing of the range for [`STALL_MAX`], or fails, makes the partition
/// [`Comparison::Unreadable`].
pub async fn compare_streams<S: BatchSource>(
    sources: &mut [(i32, S)],
    start: i64,
    end: i64,
) -> Comparison {
    let mut pending: Vec<VecDeque<FetchedBatch>> =
        sources.iter().map(|_| VecDeque::new()).collect();
    let mut offset = start;
    let mut records = 0i64;
    while offset < end {
        for (index, (node_id, source)) in sources.iter_mut().enumerate() {
            let queue = &mut pending[index];
            let mut stalled_since = Instant::now();
            loop {
                while queue.front().is_some_and(|b| b.next_offset <= offset) {
                    queue.pop_front();
                }
                if !queue.is_empty() {
                    break;
                }
                if stalled_since.elapsed() >= STALL_MAX {
                    return Comparison::Unreadable {
                        node_id: *node_id,
                        reason: format!(
                            "returned nothing at offset {offset} within {}s",
                            STALL_MAX.as_secs()
                        ),
                    };
                }
                match source.next_batches().await {
                    Ok(batches) => {
                        if !batches.is_empty() {
                            stalled_since = Instant::now();
                        }
                        queue.extend(batches);
                    }
                    Err(error) => {
                        return Comparison::Unreadable {
                            node_id: *node_id,
                            reason: error.to_string(),
                        }
                    }
                }
            }
        }
        let heads: Vec<(i32, &FetchedBatch)> = sources
            .iter()
            .zip(&pending)
            .filter_map(|((node_id, _), queue)| queue.front().map(|b| (*node_id, b)))
            .collect();
        if let Err(detail) = compare_heads(&heads) {
            let offset = heads
                .iter()
                .map(|(_, b)| b.base_offset)
                .min()
                .unwrap_or(offset)
                .max(offset);
            return Comparison::Differ { offset, detail };
        }
        let batch = heads[0].1;
        let next = batch.next_offset;
        records += next.min(end) - batch.base_offset.max(offset);
        offset = next;
        for queue in &mut pending {
            queue.pop_front();
        }
    }
    Comparison::Identical { records }
}

/// The line `compare-replicas` prints for a partition.
pub fn comparison_line(partition: i32, nodes: &[i32], end: i64, comparison: &Comparison) -> String {
    match comparison {
        Comparison::Identical { records } => {
            let nodes: Vec<String> = nodes.iter().map(i32::to_string).collect();
            format!(
                "partition {partition}: {records} records identical on nodes {} up to offset {end}",
                nodes.join(",")
            )
        }
        Comparison::Differ { offset, detail } => {
            format!("partition {partition}: replicas differ at offset {offset}: {detail}")
        }
        Comparison::Unreadable { node_id, reason } => {
            format!("partition {partition}: node {node_id} unreadable: {reason}")
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shardmq_schema::batch::{stamp, BatchBuilder};

    use super::*;

    /// A stored batch of `count` records from `base`, values tagged.
    fn batch(base: i64, count: usize, tag: &str) -> FetchedBatch {
        let mut buf = Vec::new();
        let mut builder = BatchBuilder::new(&mut buf, 0, 1_000);
        for i in 0..count {
            let value = format!("{tag}-{i}");
            builder.append(1_000, None, Some(value.as_bytes()), &[]);
        }
        let len = builder.finish();
        buf.truncate(len);
        stamp(&mut buf, base, 1);
        FetchedBatch {
            topic: "t".into(),
            partition: 0,
            base_offset: base,
            next_offset: base + count as i64,
            record_count: count as i32,
            is_control: false,
            bytes: Bytes::from(buf),
        }
    }

    /// Batches handed out a few at a time, then an error.
    struct Fake {
        chunks: VecDeque<Vec<FetchedBatch>>,
    }

    impl Fake {
        fn new(batches: Vec<FetchedBatch>, per_poll: usize) -> Self {
            Self {
                chunks: batches.chunks(per_poll).map(<[_]>::to_vec).collect(),
            }
        }
    }

    impl BatchSource for Fake {
        async fn next_batches(&mut self) -> Result<Vec<FetchedBatch>, ClientError> {
            self.chunks.pop_front().ok_or(ClientError::Closed)
        }
    }

    fn log(sizes: &[usize], tag: &str) -> Vec<FetchedBatch> {
        let mut base = 0;
        sizes
            .iter()
            .map(|&n| {
                let b = batch(base, n, tag);
                base += n as i64;
                b
            })
            .collect()
    }

    #[tokio::test]
    async fn identical_replicas_compare_equal_whatever_the_fetch_sizes() {
        let batches = log(&[3, 1, 4, 2], "v");
        let mut sources = vec![
            (1, Fake::new(batches.clone(), 1)),
            (2, Fake::new(batches.clone(), 3)),
            (3, Fake::new(batches, 4)),
        ];
        let result = compare_streams(&mut sources, 0, 10).await;
        assert_eq!(result, Comparison::Identical { records: 10 });
        assert_eq!(
            comparison_line(0, &[1, 2, 3], 10, &result),
            "partition 0: 10 records identical on nodes 1,2,3 up to offset 10"
        );
    }

    #[tokio::test]
    async fn the_range_starts_at_the_highest_log_start_and_stops_at_the_lowest_end() {
        // Node 2 has more beyond the range: not compared.
        let mut longer = log(&[3, 1, 4], "v");
        longer.push(batch(8, 2, "other"));
        let mut sources = vec![
            (1, Fake::new(log(&[3, 1, 4], "v"), 2)),
            (2, Fake::new(longer, 2)),
        ];
        assert_eq!(
            compare_streams(&mut sources, 3, 8).await,
            Comparison::Identical { records: 5 }
        );
        // An empty range compares nothing and reads nothing.
        let mut none: Vec<(i32, Fake)> = vec![(1, Fake::new(Vec::new(), 1))];
        assert_eq!(
            compare_streams(&mut none, 5, 5).await,
            Comparison::Identical { records: 0 }
        );
    }

    #[tokio::test]
    async fn the_first_differing_batch_is_reported() {
        let mut other = log(&[3, 1], "v");
        other.push(batch(4, 4, "w"));
        let mut sources = vec![
            (1, Fake::new(log(&[3, 1, 4], "v"), 2)),
            (2, Fake::new(other, 2)),
        ];
        let result = compare_streams(&mut sources, 0, 8).await;
        let Comparison::Differ { offset, detail } = &result else {
            panic!("{result:?}");
        };
        assert_eq!(*offset, 4);
        assert!(detail.starts_with("node 1: offsets 4..8, "), "{detail}");
        assert!(detail.contains("; node 2: offsets 4..8, "), "{detail}");
        assert!(detail.contains("(differs from node 1 at byte "), "{detail}");
        let line = comparison_line(3, &[1, 2], 8, &result);
        assert!(
            line.starts_with("partition 3: replicas differ at offset 4: node 1: "),
            "{line}"
        );
    }

    #[tokio::test]
    async fn different_batch_boundaries_are_a_difference() {
        let mut sources = vec![
            (1, Fake::new(log(&[2, 2], "v"), 1)),
            (2, Fake::new(log(&[4], "v"), 1)),
        ];
        let result = compare_streams(&mut sources, 0, 4).await;
        assert!(
            matches!(result, Comparison::Differ { offset: 0, .. }),
            "{result:?}"
        );
    }

    #[tokio::test]
    async fn a_replica_that_cannot_be_read_is_reported() {
        let mut sources = vec![
            (1, Fake::new(log(&[2, 2], "v"), 1)),
            (4, Fake::new(log(&[2], "v"), 1)),
        ];
        let result = compare_streams(&mut sources, 0, 4).await;
        assert_eq!(
            result,
            Comparison::Unreadable {
                node_id: 4,
                reason: "closed".to_owned()
            }
        );
        assert_eq!(
            comparison_line(0, &[1, 4], 4, &result),
            "partition 0: node 4 unreadable: closed"
        );
    }
}
