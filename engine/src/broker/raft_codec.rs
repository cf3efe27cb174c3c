//! raft-rs messages in and out of the inter-broker protocol's `RaftBatch`
//! frames (`schema/fbs/interbroker.fbs`).
//!
//! Hot path (replicate): a record batch in an entry is copied once, into
//! the outgoing frame; on the receiving side it stays where the socket put
//! it (the entry's `Bytes` is a slice of the received frame) until storage
//! appends it. Only snapshots (rare, metadata only for partitions) go
//! through protobuf.

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use protobuf::{Message as _, ProtobufEnum as _};
use shardmq_schema::interbroker as ib;

use crate::raft::eraftpb::{Entry, EntryType, Message, MessageType, Snapshot};
use crate::raft::GroupId;

/// Bytes a `RaftBatch` frame may grow to before the rest of a destination's
/// messages go into another frame (a single message larger than this still
/// goes alone).
pub const RAFT_FRAME_BYTES_TARGET: usize = 8 << 20;

/// Bytes a message takes in a frame, roughly (for splitting).
fn message_bytes(msg: &Message) -> usize {
    let entries: usize = msg
        .entries
        .iter()
        .map(|e| e.data.len() + e.context.len() + 64)
        .sum();
    128 + entries + msg.context.len()
}

/// Encodes `msgs` (of any groups) into `RaftBatch` envelope frames of at
/// most about [`RAFT_FRAME_BYTES_TARGET`] bytes each, draining `msgs`, and
/// hands each finished builder to `emit`, which takes its buffer as the
/// frame without copying it (`Frame::from_builder`).
pub fn encode_raft_frames(
    msgs: &mut Vec<(GroupId, Message)>,
    mut emit: impl FnMut(FlatBufferBuilder<'static>),
) {
    let mut start = 0;
    while start < msgs.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < msgs.len()
            && (end == start || bytes + message_bytes(&msgs[end].1) <= RAFT_FRAME_BYTES_TARGET)
        {
            bytes += message_bytes(&msgs[end].1);
            end += 1;
        }
        // Sized for what goes in, so the buffer is allocated once.
        let mut builder = FlatBufferBuilder::with_capacity(bytes + 256);
        let b = &mut builder;
        let mut offsets = Vec::with_capacity(end - start);
        for (group, m) in &msgs[start..end] {
            offsets.push(encode_message(b, *group, m));
        }
        let messages = b.create_vector(&offsets);
        let batch = ib::RaftBatch::create(
            b,
            &ib::RaftBatchArgs {
                messages: Some(messages),
            },
        );
        let root = ib::Envelope::create(
            b,
            &ib::EnvelopeArgs {
                correlation_id: 0,
                body_type: ib::Body::RaftBatch,
                body: Some(batch.as_union_value()),
            },
        );
        ib::finish_envelope_frame(b, root);
        emit(builder);
        start = end;
    }
    msgs.clear();
}

fn entry_type(t: EntryType) -> ib::EntryType {
    match t {
        EntryType::EntryNormal => ib::EntryType::Normal,
        EntryType::EntryConfChange => ib::EntryType::ConfChange,
        EntryType::EntryConfChangeV2 => ib::EntryType::ConfChangeV2,
    }
}

fn encode_message<'a>(
    b: &mut FlatBufferBuilder<'a>,
    group: GroupId,
    m: &Message,
) -> flatbuffers::WIPOffset<ib::RaftMessage<'a>> {
    let entries = if m.entries.is_empty() {
        None
    } else {
        let mut out = Vec::with_capacity(m.entries.len());
        for e in m.entries.iter() {
            let data = (!e.data.is_empty()).then(|| b.create_vector(&e.data[..]));
            let context = (!e.context.is_empty()).then(|| b.create_vector(&e.context[..]));
            out.push(ib::Entry::create(
                b,
                &ib::EntryArgs {
                    entry_type: entry_type(e.get_entry_type()),
                    term: e.term,
                    index: e.index,
                    data,
                    context,
                },
            ));
        }
        Some(b.create_vector(&out))
    };
    let snapshot = m.snapshot.as_ref().map(|s| {
        let bytes = s.write_to_bytes().expect("a snapshot encodes");
        b.create_vector(&bytes)
    });
    let context = (!m.context.is_empty()).then(|| b.create_vector(&m.context[..]));
    ib::RaftMessage::create(
        b,
        &ib::RaftMessageArgs {
            group,
            msg_type: m.get_msg_type().value() as u8,
            to: m.to,
            from: m.from,
            term: m.term,
            log_term: m.log_term,
            index: m.index,
            entries,
            commit: m.commit,
            commit_term: m.commit_term,
            snapshot,
            request_snapshot: m.request_snapshot,
            reject: m.reject,
            reject_hint: m.reject_hint,
            context,
            priority: m.priority,
        },
    )
}

/// Why a received Raft message cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown raft message type {0}")]
    MessageType(u8),
    #[error("unknown entry type {0}")]
    EntryType(i8),
    #[error("snapshot does not decode: {0}")]
    Snapshot(String),
}

/// `part` as a `Bytes` sharing `frame`'s memory (a slice of it), or a copy
/// when it is not inside `frame` (never the case for verified frames).
fn share(frame: &Bytes, part: &[u8]) -> Bytes {
    let base = frame.as_ptr() as usize;
    let start = part.as_ptr() as usize;
    if start >= base && start + part.len() <= base + frame.len() {
        frame.slice(start - base..start - base + part.len())
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// Decodes every message of a verified `RaftBatch`, handing each to `f`;
/// a message that does not decode is skipped (raft resends) and counted in
/// the returned number.
pub fn decode_raft_batch(
    frame: &Bytes,
    batch: ib::RaftBatch<'_>,
    mut f: impl FnMut(GroupId, Message),
) -> usize {
    let mut bad = 0;
    for m in batch.messages().into_iter().flatten() {
        match decode_message(frame, m) {
            Ok(msg) => f(m.group(), msg),
            Err(error) => {
                bad += 1;
                tracing::debug!(%error, "raft message dropped");
            }
        }
    }
    bad
}

fn decode_message(frame: &Bytes, m: ib::RaftMessage<'_>) -> Result<Message, DecodeError> {
    let msg_type = MessageType::from_i32(i32::from(m.msg_type()))
        .ok_or(DecodeError::MessageType(m.msg_type()))?;
    let mut out = Message {
        msg_type,
        to: m.to(),
        from: m.from(),
        term: m.term(),
        log_term: m.log_term(),
        index: m.index(),
        commit: m.commit(),
        commit_term: m.commit_term(),
        request_snapshot: m.request_snapshot(),
        reject: m.reject(),
        reject_hint: m.reject_hint(),
        priority: m.priority(),
        ..Default::default()
    };
    if let Some(context) = m.context() {
        out.context = share(frame, context.bytes());
    }
    if let Some(entries) = m.entries() {
        let mut v = Vec::with_capacity(entries.len());
        for e in entries {
            let entry_type = match e.entry_type() {
                ib::EntryType::Normal => EntryType::EntryNormal,
                ib::EntryType::ConfChange => EntryType::EntryConfChange,
                ib::EntryType::ConfChangeV2 => EntryType::EntryConfChangeV2,
                other => return Err(DecodeError::EntryType(other.0)),
            };
            let mut entry = Entry {
                entry_type,
                term: e.term(),
                index: e.index(),
                ..Default::default()
            };
            if let Some(data) = e.data() {
                entry.data = share(frame, data.bytes());
            }
            if let Some(context) = e.context() {
                entry.context = share(frame, context.bytes());
            }
            v.push(entry);
        }
        out.set_entries(v.into());
    }
    if let Some(snap) = m.snapshot() {
        let snapshot = Snapshot::parse_from_bytes(snap.bytes())
            .map_err(|error| DecodeError::Snapshot(error.to_string()))?;
        out.set_snapshot(snapshot);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_with_entry_data_borrowed_from_the_frame() {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = 2;
        m.from = 1;
        m.term = 5;
        m.log_term = 4;
        m.index = 10;
        m.commit = 9;
        m.reject_hint = 3;
        let mut e = Entry {
            term: 5,
            index: 11,
            data: Bytes::from_static(b"batch bytes"),
            ..Default::default()
        };
        e.set_entry_type(EntryType::EntryNormal);
        let mut cc = Entry {
            term: 5,
            index: 12,
            data: Bytes::from_static(b"conf"),
            ..Default::default()
        };
        cc.set_entry_type(EntryType::EntryConfChangeV2);
        m.set_entries(vec![e, cc].into());
        let mut snap_msg = Message::default();
        snap_msg.set_msg_type(MessageType::MsgSnapshot);
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 40;
        snap.mut_metadata().term = 3;
        snap.data = Bytes::from_static(b"12345678");
        snap_msg.set_snapshot(snap);

        let mut msgs = vec![(7u64, m.clone()), (0u64, snap_msg.clone())];
        let mut frames = Vec::new();
        encode_raft_frames(&mut msgs, |b| {
            frames.push(shardmq_net::Frame::from_builder(b).unwrap().into_bytes())
        });
        assert!(msgs.is_empty());
        assert_eq!(frames.len(), 1);
        let frame = &frames[0];
        let env = ib::verify_envelope(frame).unwrap();
        let batch = env.body_as_raft_batch().unwrap();
        let mut got = Vec::new();
        let bad = decode_raft_batch(frame, batch, |g, msg| got.push((g, msg)));
        assert_eq!(bad, 0);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 7);
        assert_eq!(got[0].1, m);
        let data = &got[0].1.entries[0].data;
        let range = frame.as_ptr_range();
        assert!(range.contains(&data.as_ptr()), "entry data is borrowed");
        assert_eq!(got[1], (0, snap_msg));
    }

    #[test]
    fn large_outboxes_split_into_several_frames() {
        let mut msgs = Vec::new();
        for i in 0..20u64 {
            let mut m = Message::default();
            m.set_msg_type(MessageType::MsgAppend);
            m.index = i;
            let e = Entry {
                data: Bytes::from(vec![7u8; 1 << 20]),
                ..Default::default()
            };
            m.set_entries(vec![e].into());
            msgs.push((1, m));
        }
        let mut count = 0;
        let mut seen = 0;
        encode_raft_frames(&mut msgs, |b| {
            count += 1;
            let frame = shardmq_net::Frame::from_builder(b).unwrap().into_bytes();
            assert!(frame.len() <= RAFT_FRAME_BYTES_TARGET + (2 << 20));
            let env = ib::verify_envelope(&frame).unwrap();
            decode_raft_batch(&frame, env.body_as_raft_batch().unwrap(), |_, m| {
                assert_eq!(m.index, seen);
                seen += 1;
            });
        });
        assert!(count >= 3, "{count} frames");
        assert_eq!(seen, 20);
    }
}
