//! What a report records about where it ran: the machine (from `/proc` and
//! `/sys`) and the commit (from git).
//!
//! Every probe is best effort: a file that is missing or unreadable gives
//! "unknown" (or 0), never an error, so a report can always be written.
//! The parsers take the files' text and are tested on samples.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::format;
use super::model::Machine;

/// Written for any probe that fails.
pub const UNKNOWN: &str = "unknown";

/// Bound on the symlinks and parent directories followed while resolving
/// paths, so a strange filesystem cannot make a probe loop.
const PATH_STEPS_MAX: usize = 64;

/// Describes the machine whose disk holds `data_dir`: CPU model, the cores
/// this process may use, total memory, kernel release, and the device and
/// filesystem type of the mount holding `data_dir` (or its nearest existing
/// ancestor).
pub fn detect_machine(data_dir: &Path) -> Machine {
    let cpu_model = read_text("/proc/cpuinfo")
        .and_then(|t| parse_cpu_model(&t))
        .unwrap_or_else(|| UNKNOWN.to_string());
    let cores = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let memory_bytes = read_text("/proc/meminfo")
        .and_then(|t| parse_mem_total_bytes(&t))
        .unwrap_or(0);
    let kernel = read_text("/proc/sys/kernel/osrelease")
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| UNKNOWN.to_string());
    let (disk, filesystem) = match read_text("/proc/self/mounts")
        .and_then(|mounts| find_mount(&mounts, &existing_ancestor(data_dir)))
    {
        Some(mount) => (describe_device(&mount.device), mount.fs_type),
        None => (UNKNOWN.to_string(), UNKNOWN.to_string()),
    };
    Machine {
        cpu_model,
        cores,
        memory_bytes,
        kernel,
        disk,
        filesystem,
    }
}

/// `git describe --always --dirty` run in `repo_dir`, or "unknown" when git
/// is missing, fails, or prints nothing.
pub fn git_commit(repo_dir: &Path) -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(repo_dir)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|text| text.trim().to_string())
        .filter(|text| !text.is_empty())
        .unwrap_or_else(|| UNKNOWN.to_string())
}

fn read_text(path: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(path).ok()
}

/// The first CPU description in `/proc/cpuinfo`: "model name" on x86,
/// else "Model" or "Hardware" or "cpu" (arm, POWER).
pub fn parse_cpu_model(cpuinfo: &str) -> Option<String> {
    for key in ["model name", "Model", "Hardware", "cpu"] {
        let found = cpuinfo.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key && !v.trim().is_empty()).then(|| v.trim().to_string())
        });
        if found.is_some() {
            return found;
        }
    }
    None
}

/// `MemTotal` of `/proc/meminfo` in bytes (the file gives KiB).
pub fn parse_mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let unit_bytes = match words.next() {
        Some("kB") | Some("KiB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(unit_bytes)
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub device: String,
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// The mount holding `path` (absolute, symlinks resolved): the one with the
/// longest mount point that contains it; of equal mount points, the last
/// listed, which is the one on top.
pub fn find_mount(mounts: &str, path: &Path) -> Option<Mount> {
    let mut best: Option<Mount> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(mount_point), Some(fs_type)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mount_field(mount_point));
        if !path.starts_with(&mount_point) {
            continue;
        }
        let longer = best
            .as_ref()
            .is_none_or(|b| mount_point.as_os_str().len() >= b.mount_point.as_os_str().len());
        if longer {
            best = Some(Mount {
                device: unescape_mount_field(device),
                mount_point,
                fs_type: fs_type.to_string(),
            });
        }
    }
    best
}

/// Undoes the octal escapes (`\040` for a space, `\011`, `\012`, `\134`)
/// the kernel writes in `/proc/self/mounts` fields.
fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match escape {
            Some(d) => {
                let value = (u32::from(d[0] - b'0') << 6)
                    | (u32::from(d[1] - b'0') << 3)
                    | u32::from(d[2] - b'0');
                out.push(u8::try_from(value).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` made absolute with symlinks resolved; when it does not exist yet,
/// its nearest existing ancestor.
fn existing_ancestor(path: &Path) -> PathBuf {
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|cwd| cwd.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut candidate = absolute.as_path();
    for _ in 0..PATH_STEPS_MAX {
        if let Ok(resolved) = candidate.canonicalize() {
            return resolved;
        }
        match candidate.parent() {
            Some(parent) => candidate = parent,
            None => break,
        }
    }
    PathBuf::from("/")
}

/// "/dev/vda (virtio disk, 256.0 GiB, write cache: write back)" for a block
/// device, or the source as given ("tmpfs", "overlay") for the rest.
fn describe_device(device: &str) -> String {
    let Some(block) = block_device_name(device) else {
        return if device.is_empty() {
            UNKNOWN.to_string()
        } else {
            device.to_string()
        };
    };
    let sys = Path::new("/sys/block").join(&block);
    let model = read_text(sys.join("device/model"))
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| model_from_name(&block));
    let mut details = vec![model];
    if let Some(sectors) = read_text(sys.join("size")).and_then(|s| s.trim().parse::<u64>().ok()) {
        details.push(format::binary_bytes(sectors.saturating_mul(512)));
    }
    if let Some(cache) = read_text(sys.join("queue/write_cache")) {
        let cache = cache.trim();
        if !cache.is_empty() {
            details.push(format!("write cache: {cache}"));
        }
    }
    format!("/dev/{block} ({})", details.join(", "))
}

/// The whole-disk name under `/sys/block` of a device path such as
/// `/dev/vda1`, `/dev/mapper/root` or `/dev/nvme0n1p2`; `None` when the
/// source is not a block device (tmpfs, overlay, a network share).
fn block_device_name(device: &str) -> Option<String> {
    if !device.starts_with("/dev/") {
        return None;
    }
    let resolved = Path::new(device)
        .canonicalize()
        .unwrap_or_else(|_| PathBuf::from(device));
    let name = resolved.file_name()?.to_str()?.to_string();
    let class = Path::new("/sys/class/block").join(&name);
    if !class.exists() {
        return Some(name);
    }
    // A partition's directory sits inside its disk's directory.
    if class.join("partition").exists() {
        let disk = class
            .canonicalize()
            .ok()?
            .parent()?
            .file_name()?
            .to_str()?
            .to_string();
        return Some(disk);
    }
    Some(name)
}

/// A description from the device name when `/sys` gives no model.
fn model_from_name(block: &str) -> String {
    let kind = if block.starts_with("vd") {
        "virtio disk"
    } else if block.starts_with("xvd") {
        "Xen virtual disk"
    } else if block.starts_with("nvme") {
        "NVMe disk"
    } else if block.starts_with("dm-") {
        "device-mapper volume"
    } else if block.starts_with("md") {
        "software RAID"
    } else if block.starts_with("loop") {
        "loop device"
    } else if block.starts_with("zram") || block.starts_with("ram") {
        "RAM disk"
    } else {
        "disk, model unknown"
    };
    kind.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_model_from_x86_and_arm() {
        let x86 = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel\t\t: 1\n\
                   model name\t: AMD EPYC 7B13\nflags\t\t: fpu\n";
        assert_eq!(parse_cpu_model(x86).as_deref(), Some("AMD EPYC 7B13"));
        let arm = "processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n\n\
                   Model\t: Raspberry Pi 4 Model B\n";
        assert_eq!(
            parse_cpu_model(arm).as_deref(),
            Some("Raspberry Pi 4 Model B")
        );
        assert_eq!(parse_cpu_model(""), None);
        assert_eq!(parse_cpu_model("model name\t:\n"), None);
    }

    #[test]
    fn mem_total_in_bytes() {
        let meminfo = "MemTotal:       24683656 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_mem_total_bytes(meminfo), Some(24_683_656 * 1024));
        assert_eq!(parse_mem_total_bytes("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total_bytes("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn longest_mount_prefix_wins_and_escapes_are_undone() {
        let mounts = "/dev/vda / ext4 rw,relatime 0 0\n\
                      proc /proc proc rw 0 0\n\
                      tmpfs /var/tmp tmpfs rw 0 0\n\
                      /dev/vdb1 /var/tmp/my\\040disk xfs rw 0 0\n\
                      garbage\n";
        let find = |p: &str| find_mount(mounts, Path::new(p)).map(|m| (m.device, m.fs_type));
        assert_eq!(find("/home/x"), Some(("/dev/vda".into(), "ext4".into())));
        assert_eq!(
            find("/var/tmp/data"),
            Some(("tmpfs".into(), "tmpfs".into()))
        );
        assert_eq!(
            find("/var/tmp/my disk/d"),
            Some(("/dev/vdb1".into(), "xfs".into()))
        );
        // A mount point is a prefix by whole components only.
        assert_eq!(
            find("/var/tmpfoo"),
            Some(("/dev/vda".into(), "ext4".into()))
        );
        assert_eq!(find_mount("", Path::new("/x")), None);
    }

    #[test]
    fn later_mount_on_the_same_point_wins() {
        let mounts = "/dev/vda / ext4 rw 0 0\noverlay / overlay rw 0 0\n";
        let mount = find_mount(mounts, Path::new("/srv")).expect("mount");
        assert_eq!(mount.fs_type, "overlay");
    }

    #[test]
    fn unescape_leaves_plain_and_malformed_text_alone() {
        assert_eq!(unescape_mount_field("/a\\040b"), "/a b");
        assert_eq!(unescape_mount_field("/a\\134b"), "/a\\b");
        assert_eq!(unescape_mount_field("/a\\04"), "/a\\04");
        assert_eq!(unescape_mount_field("/a\\999"), "/a\\999");
    }

    #[test]
    fn non_block_sources_are_named_as_given() {
        assert_eq!(describe_device("tmpfs"), "tmpfs");
        assert_eq!(describe_device(""), UNKNOWN);
    }

    #[test]
    fn detect_machine_never_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let machine = detect_machine(&dir.path().join("not/yet/created"));
        assert!(!machine.cpu_model.is_empty());
        assert!(!machine.disk.is_empty());
        assert!(!machine.filesystem.is_empty());
        // This process runs on at least one core.
        assert!(machine.cores >= 1);
    }

    #[test]
    fn git_commit_outside_a_repository_is_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The temporary directory may sit inside a repository on some
        // machines; only a directory that does not exist is sure to fail.
        assert_eq!(git_commit(&dir.path().join("missing")), UNKNOWN);
    }
}
