//! The cluster metadata as checksummed bytes, and as files.
//!
//! A snapshot is a 14-byte header, then the rkyv archive of the
//! [`ClusterMetadata`] (the body):
//!
//! ```text
//! | "SMQC" | format: u16 LE | body bytes: u32 LE | crc32c(body): u32 LE | body ... |
//! |<- 4 ->|<----- 2 ----->|<------- 4 -------->|<-------- 4 -------->|
//! ```
//!
//! [`decode_snapshot`] checks the magic, the format, the length and the crc
//! before it lets rkyv validate the body (bytecheck) and then checks the
//! metadata's own invariants, so a snapshot that reads back is one this code
//! wrote, whole.
//!
//! # Files
//!
//! The controller keeps its snapshot in a directory of its own as
//! `controller-<applied_index, 20 digits>.snap`. Writing one
//! ([`write_snapshot_file`]) is durable before it returns:
//!
//! 1. the bytes go to `<name>.tmp`, which is then fsynced;
//! 2. it is renamed to `<name>`;
//! 3. the directory is fsynced, so the rename survives a crash;
//! 4. only then are older snapshots (and temp files left by a crash)
//!    removed.
//!
//! A crash at any step leaves the previous snapshot or the new one readable,
//! never a partial file under a snapshot name. [`load_latest_snapshot`]
//! reads the newest and ignores temp files; if the newest is unreadable it
//! is an error that names the file, never a silent fall-back to an older
//! state. These helpers block: snapshots are small and rare.
//!
//! A snapshot received from the controller's leader is written without step
//! 4 ([`write_snapshot_file_keeping_older`]) before the controller's log
//! restarts from it, and the older ones are removed once that restart is
//! durable ([`remove_snapshots_before`]). A crash in between leaves a
//! snapshot past the log's end: the controller opens with the newest
//! snapshot its log reaches ([`load_latest_snapshot_up_to`]).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use super::limits::SNAPSHOT_BYTES_MAX;
use super::state::{ClusterMetadata, InvariantError};

/// First bytes of every snapshot.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"SMQC";

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_FORMAT_VERSION: u16 = 1;

/// Length of the header before the body.
pub const SNAPSHOT_HEADER_BYTES: usize = 14;

const SNAPSHOT_FILE_PREFIX: &str = "controller-";
const SNAPSHOT_FILE_SUFFIX: &str = ".snap";
const TEMP_SUFFIX: &str = ".tmp";
const INDEX_DIGITS: usize = 20;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system failed.
    #[error("controller snapshot: {op} {}: {source}", path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Fewer bytes than a header.
    #[error("snapshot is {len} bytes, shorter than its {need}-byte header")]
    Truncated {
        /// Bytes given.
        len: usize,
        /// [`SNAPSHOT_HEADER_BYTES`].
        need: usize,
    },
    /// Not a controller snapshot at all.
    #[error("not a controller snapshot: it starts with {found:02x?}, not \"SMQC\"")]
    BadMagic {
        /// The first four bytes.
        found: [u8; 4],
    },
    /// A format this build does not read.
    #[error(
        "snapshot has format {version}, this broker reads format {SNAPSHOT_FORMAT_VERSION} \
         only: it was written by a newer broker"
    )]
    UnsupportedFormat {
        /// The format found.
        version: u16,
    },
    /// Larger than any snapshot may be.
    #[error("snapshot is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its length (of the body, or of the file).
        len: u64,
        /// [`SNAPSHOT_BYTES_MAX`].
        max: usize,
    },
    /// The body is not as long as the header says: a truncated or extended
    /// file.
    #[error("snapshot header announces {header} body bytes, but {actual} follow it")]
    LengthMismatch {
        /// The length in the header.
        header: u32,
        /// The bytes after the header.
        actual: usize,
    },
    /// The body's checksum does not match: corruption.
    #[error("snapshot checksum mismatch: header says {stored:#010x}, body has {computed:#010x}")]
    CrcMismatch {
        /// The crc in the header.
        stored: u32,
        /// The crc of the body.
        computed: u32,
    },
    /// The body failed rkyv validation.
    #[error("snapshot body is corrupt: {reason}")]
    Corrupt {
        /// What the validator found.
        reason: String,
    },
    /// The body decoded but breaks an invariant of the metadata.
    #[error("snapshot {0}")]
    Inconsistent(#[from] InvariantError),
    /// A snapshot file holds the metadata of another index than its name.
    #[error("the snapshot is named for index {file_index} but holds index {applied_index}")]
    WrongIndex {
        /// The index of its name.
        file_index: u64,
        /// The metadata's `applied_index`.
        applied_index: u64,
    },
    /// A snapshot file could not be used.
    #[error("controller snapshot {} cannot be used: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<SnapshotError>,
    },
}

/// The snapshot bytes of `metadata`: header, then its rkyv archive.
///
/// # Panics
///
/// Only if the archive would exceed rkyv's 2 GiB relative-pointer range,
/// twice [`SNAPSHOT_BYTES_MAX`], which the limits `apply` enforces keep out
/// of reach.
pub fn encode_snapshot(metadata: &ClusterMetadata) -> Vec<u8> {
    let body = rkyv::to_bytes::<rkyv::rancor::Error>(metadata)
        .expect("the cluster metadata archives within rkyv's offset range");
    let body_len = u32::try_from(body.len()).expect("an rkyv archive is below 4 GiB");
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
    bytes.extend_from_slice(&SNAPSHOT_MAGIC);
    bytes.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
    bytes.extend_from_slice(&body_len.to_le_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    debug_assert_eq!(bytes.len(), SNAPSHOT_HEADER_BYTES + body.len());
    bytes
}

/// Reads the metadata from snapshot `bytes` (from [`encode_snapshot`]),
/// checking the header, the crc, the archive and the metadata's invariants.
/// `bytes` need not be aligned.
pub fn decode_snapshot(bytes: &[u8]) -> Result<ClusterMetadata, SnapshotError> {
    let Some((header, body)) = bytes.split_first_chunk::<SNAPSHOT_HEADER_BYTES>() else {
        return Err(SnapshotError::Truncated {
            len: bytes.len(),
            need: SNAPSHOT_HEADER_BYTES,
        });
    };
    let [m0, m1, m2, m3, v0, v1, l0, l1, l2, l3, c0, c1, c2, c3] = *header;
    let magic = [m0, m1, m2, m3];
    if magic != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic { found: magic });
    }
    let version = u16::from_le_bytes([v0, v1]);
    if version != SNAPSHOT_FORMAT_VERSION {
        return Err(SnapshotError::UnsupportedFormat { version });
    }
    let body_len = u32::from_le_bytes([l0, l1, l2, l3]);
    if body_len as usize > SNAPSHOT_BYTES_MAX {
        return Err(SnapshotError::TooLarge {
            len: u64::from(body_len),
            max: SNAPSHOT_BYTES_MAX,
        });
    }
    if body.len() != body_len as usize {
        return Err(SnapshotError::LengthMismatch {
            header: body_len,
            actual: body.len(),
        });
    }
    let stored = u32::from_le_bytes([c0, c1, c2, c3]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(SnapshotError::CrcMismatch { stored, computed });
    }
    // The body starts 14 bytes into the input; the validator needs it
    // aligned.
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let metadata =
        rkyv::from_bytes::<ClusterMetadata, rkyv::rancor::Error>(&aligned).map_err(|e| {
            SnapshotError::Corrupt {
                reason: e.to_string(),
            }
        })?;
    metadata.check_invariants()?;
    Ok(metadata)
}

/// The file name of the snapshot at `applied_index`.
pub fn snapshot_file_name(applied_index: u64) -> String {
    format!("{SNAPSHOT_FILE_PREFIX}{applied_index:0INDEX_DIGITS$}{SNAPSHOT_FILE_SUFFIX}")
}

/// The index a snapshot file name stands for; `None` for any other name
/// (temp files included).
fn parse_snapshot_file_name(name: &str) -> Option<u64> {
    let digits = name
        .strip_prefix(SNAPSHOT_FILE_PREFIX)?
        .strip_suffix(SNAPSHOT_FILE_SUFFIX)?;
    if digits.len() != INDEX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `name` is a temp file a snapshot write left behind.
fn is_temp_file_name(name: &str) -> bool {
    name.strip_suffix(TEMP_SUFFIX)
        .is_some_and(|n| parse_snapshot_file_name(n).is_some())
}

/// Writes `metadata` durably as `dir/controller-<applied_index>.snap`, then
/// removes older snapshots and leftover temp files from `dir`, following the
/// steps of the module documentation. Returns the new file's path.
///
/// An error from the last step (removing older files) comes after the new
/// snapshot is durable. Snapshots of later indexes than `metadata`'s stay.
pub fn write_snapshot_file(
    dir: &Path,
    metadata: &ClusterMetadata,
) -> Result<PathBuf, SnapshotError> {
    let path = write_snapshot_file_keeping_older(dir, metadata)?;
    remove_snapshots_before(dir, metadata.applied_index)?;
    Ok(path)
}

/// Steps 1 to 3 of [`write_snapshot_file`]: the new snapshot is durable,
/// the older ones stay. For a snapshot received from the controller's
/// leader, written before the log restarts from it: until that restart is
/// durable the older snapshot is the one the log goes with
/// ([`load_latest_snapshot_up_to`]).
pub fn write_snapshot_file_keeping_older(
    dir: &Path,
    metadata: &ClusterMetadata,
) -> Result<PathBuf, SnapshotError> {
    let name = snapshot_file_name(metadata.applied_index);
    let path = dir.join(&name);
    let temp = dir.join(format!("{name}{TEMP_SUFFIX}"));
    let bytes = encode_snapshot(metadata);

    let mut file = File::create(&temp).map_err(io("create", &temp))?;
    file.write_all(&bytes).map_err(io("write", &temp))?;
    file.sync_all().map_err(io("fsync", &temp))?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(io("rename", &path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync directory", dir))?;
    Ok(path)
}

/// Step 4 of [`write_snapshot_file`]: removes the snapshots of indexes
/// before `applied_index`, and temp files.
pub fn remove_snapshots_before(dir: &Path, applied_index: u64) -> Result<(), SnapshotError> {
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let older = parse_snapshot_file_name(file_name).is_some_and(|index| index < applied_index);
        if older || is_temp_file_name(file_name) {
            let old = entry.path();
            std::fs::remove_file(&old).map_err(io("remove old snapshot", &old))?;
        }
    }
    Ok(())
}

/// Reads the newest snapshot of `dir`: `None` when it has none. Temp files
/// and other names are ignored; a newest snapshot that cannot be read or
/// validated is an error naming it ([`SnapshotError::InFile`]).
pub fn load_latest_snapshot(dir: &Path) -> Result<Option<ClusterMetadata>, SnapshotError> {
    load_latest_snapshot_up_to(dir, u64::MAX)
}

/// [`load_latest_snapshot`] among the snapshots of indexes up to
/// `index_max`: the controller opens with the newest its log reaches (one
/// past the log's end was received, but the log's restart from it did not
/// survive a crash).
pub fn load_latest_snapshot_up_to(
    dir: &Path,
    index_max: u64,
) -> Result<Option<ClusterMetadata>, SnapshotError> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(dir).map_err(io("list", dir))? {
        let entry = entry.map_err(io("list", dir))?;
        let Some(index) = entry
            .file_name()
            .to_str()
            .and_then(parse_snapshot_file_name)
        else {
            continue;
        };
        if index <= index_max && newest.as_ref().is_none_or(|(newest, _)| index > *newest) {
            newest = Some((index, entry.path()));
        }
    }
    let Some((index, path)) = newest else {
        return Ok(None);
    };
    let in_file = |source: SnapshotError| SnapshotError::InFile {
        path: path.clone(),
        source: Box::new(source),
    };
    let bytes = read_bounded(&path)?;
    let metadata = decode_snapshot(&bytes).map_err(in_file)?;
    if metadata.applied_index != index {
        return Err(in_file(SnapshotError::WrongIndex {
            file_index: index,
            applied_index: metadata.applied_index,
        }));
    }
    Ok(Some(metadata))
}

/// The bytes of `path`, refusing a file longer than any snapshot may be.
fn read_bounded(path: &Path) -> Result<Vec<u8>, SnapshotError> {
    let limit = (SNAPSHOT_HEADER_BYTES + SNAPSHOT_BYTES_MAX) as u64;
    let file = File::open(path).map_err(io("open", path))?;
    let len = file.metadata().map_err(io("stat", path))?.len();
    if len > limit {
        return Err(SnapshotError::InFile {
            path: path.to_path_buf(),
            source: Box::new(SnapshotError::TooLarge {
                len,
                max: SNAPSHOT_BYTES_MAX,
            }),
        });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // `take` bounds the read should the file grow after the stat.
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(io("read", path))?;
    Ok(bytes)
}

fn io<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> SnapshotError + 'p {
    move |source| SnapshotError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::controller::{BrokerRegistration, Command};

    fn metadata() -> ClusterMetadata {
        let mut m = ClusterMetadata::new();
        let mut index = 0;
        let mut apply = |m: &mut ClusterMetadata, c: Command| {
            index += 1;
            m.apply(index, &c).unwrap();
        };
        for node_id in 1..=3 {
            apply(
                &mut m,
                Command::RegisterBroker(BrokerRegistration {
                    node_id,
                    inter_broker_addr: format!("10.0.0.{node_id}:9100"),
                    client_host: format!("10.0.0.{node_id}"),
                    client_port: 9092,
                    shard_ports: vec![9200, 9201],
                    incarnation: 40 + node_id as u64,
                }),
            );
        }
        apply(
            &mut m,
            Command::CreateTopic {
                name: "orders".into(),
                partitions: 3,
                replication_factor: 3,
                configs: BTreeMap::from([("cleanup.policy".into(), "delete".into())]),
            },
        );
        m
    }

    #[test]
    fn snapshots_round_trip() {
        for m in [ClusterMetadata::new(), metadata()] {
            let bytes = encode_snapshot(&m);
            assert_eq!(&bytes[..4], b"SMQC");
            assert_eq!(decode_snapshot(&bytes).unwrap(), m);
        }
    }

    #[test]
    fn decode_reads_unaligned_input() {
        let m = metadata();
        let bytes = encode_snapshot(&m);
        for shift in 1..8 {
            let mut buffer = vec![0u8; shift];
            buffer.extend_from_slice(&bytes);
            assert_eq!(decode_snapshot(&buffer[shift..]).unwrap(), m);
        }
    }

    #[test]
    fn every_corrupted_byte_is_detected() {
        let bytes = encode_snapshot(&metadata());
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut corrupt = bytes.clone();
                corrupt[i] ^= flip;
                let error = decode_snapshot(&corrupt).unwrap_err();
                let expected = match i {
                    0..4 => matches!(error, SnapshotError::BadMagic { .. }),
                    4..6 => matches!(error, SnapshotError::UnsupportedFormat { .. }),
                    6..10 => matches!(
                        error,
                        SnapshotError::LengthMismatch { .. } | SnapshotError::TooLarge { .. }
                    ),
                    _ => matches!(error, SnapshotError::CrcMismatch { .. }),
                };
                assert!(expected, "byte {i} ^ {flip:#x}: {error}");
            }
        }
    }

    #[test]
    fn truncated_and_extended_input_is_refused() {
        let bytes = encode_snapshot(&metadata());
        for len in 0..bytes.len() {
            let error = decode_snapshot(&bytes[..len]).unwrap_err();
            if len < SNAPSHOT_HEADER_BYTES {
                assert!(
                    matches!(error, SnapshotError::Truncated { .. }),
                    "{len}: {error}"
                );
            } else {
                assert!(
                    matches!(error, SnapshotError::LengthMismatch { .. }),
                    "{len}: {error}"
                );
            }
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_snapshot(&longer),
            Err(SnapshotError::LengthMismatch { .. })
        ));
    }

    /// A snapshot whose header is right for `body`, whatever `body` is.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&SNAPSHOT_MAGIC);
        bytes.extend_from_slice(&SNAPSHOT_FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    #[test]
    fn a_checksummed_body_that_breaks_an_invariant_is_refused() {
        let mut m = metadata();
        m.topics.get_mut("orders").unwrap().partitions[0].preferred_leader = 9;
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(&m).unwrap();
        let error = decode_snapshot(&framed(&body)).unwrap_err();
        assert!(matches!(error, SnapshotError::Inconsistent(_)), "{error}");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_snapshot(&bytes);
            // Past the header and the crc, straight into rkyv validation.
            prop_assert!(decode_snapshot(&framed(&bytes)).is_err());
        }

        #[test]
        fn decode_never_panics_on_mutated_bodies(
            flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        ) {
            let good = encode_snapshot(&metadata());
            let mut body = good[SNAPSHOT_HEADER_BYTES..].to_vec();
            for (at, value) in flips {
                let i = at.index(body.len());
                body[i] = value;
            }
            if let Ok(m) = decode_snapshot(&framed(&body)) {
                prop_assert_eq!(m.check_invariants(), Ok(()));
            }
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn files_are_written_loaded_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_latest_snapshot(dir.path()).unwrap().is_none());

        let mut m = metadata();
        let first = write_snapshot_file(dir.path(), &m).unwrap();
        assert_eq!(
            first.file_name().unwrap(),
            "controller-00000000000000000004.snap"
        );
        assert_eq!(load_latest_snapshot(dir.path()).unwrap(), Some(m.clone()));

        // A temp file a crash left, and a file of another kind.
        std::fs::write(
            dir.path().join("controller-00000000000000000099.snap.tmp"),
            b"half",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        assert_eq!(load_latest_snapshot(dir.path()).unwrap(), Some(m.clone()));

        m.apply(12, &Command::MarkBrokerFailed { node_id: 2 })
            .unwrap();
        write_snapshot_file(dir.path(), &m).unwrap();
        assert_eq!(
            names(dir.path()),
            vec!["controller-00000000000000000012.snap", "notes.txt"]
        );
        assert_eq!(load_latest_snapshot(dir.path()).unwrap(), Some(m));
    }

    #[test]
    fn a_corrupt_newest_snapshot_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = metadata();
        write_snapshot_file(dir.path(), &m).unwrap();
        let newest = dir.path().join(snapshot_file_name(50));
        let mut bytes = encode_snapshot(&m);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&newest, &bytes).unwrap();

        let error = load_latest_snapshot(dir.path()).unwrap_err();
        assert!(
            matches!(&error, SnapshotError::InFile { source, .. }
                if matches!(**source, SnapshotError::CrcMismatch { .. })),
            "{error}"
        );
        assert!(
            error.to_string().contains(&*newest.to_string_lossy()),
            "{error}"
        );
    }

    #[test]
    fn a_snapshot_under_another_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let m = metadata();
        std::fs::write(dir.path().join(snapshot_file_name(7)), encode_snapshot(&m)).unwrap();
        let error = load_latest_snapshot(dir.path()).unwrap_err();
        assert!(
            matches!(&error, SnapshotError::InFile { source, .. }
                if matches!(**source, SnapshotError::WrongIndex { file_index: 7, applied_index: 4 })),
            "{error}"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let error = load_latest_snapshot(&missing).unwrap_err();
        assert!(
            matches!(error, SnapshotError::Io { op: "list", .. }),
            "{error}"
        );
        assert!(error.to_string().contains("missing"), "{error}");
        let error = write_snapshot_file(&missing, &metadata()).unwrap_err();
        assert!(
            matches!(error, SnapshotError::Io { op: "create", .. }),
            "{error}"
        );
    }

    #[test]
    fn file_names_parse_only_when_exact() {
        assert_eq!(parse_snapshot_file_name(&snapshot_file_name(42)), Some(42));
        assert_eq!(
            parse_snapshot_file_name(&snapshot_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        for other in [
            "controller-42.snap",
            "controller-00000000000000000042.snap.tmp",
            "controller-0000000000000000004x.snap",
            "controller-99999999999999999999.snap",
            "topics.json",
        ] {
            assert_eq!(parse_snapshot_file_name(other), None, "{other}");
        }
        assert!(is_temp_file_name(
            "controller-00000000000000000042.snap.tmp"
        ));
        assert!(!is_temp_file_name("controller-00000000000000000042.snap"));
    }
}
