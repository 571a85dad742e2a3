//! The guest's initramfs: an uncompressed `newc` cpio archive holding `/init` (the agent),
//! `/dev/console` and the empty mount points the agent needs, nothing else.
//!
//! Uncompressed because decompression dominates boot on an emulated CPU (HOST-KVM.md: a
//! 1 MiB gzip initramfs took about 100 s to unpack under PVM emulation, a plain cpio 8 s).
//! Written here rather than by `cpio(1)` so that it is byte-for-byte reproducible: every
//! timestamp is zero, every owner is root, inode numbers are assigned in order.

use std::io::{self, Write};

/// A failure building or reading an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    /// Writing the archive failed.
    #[error("writing the archive: {0}")]
    Io(#[from] io::Error),
    /// An entry name or size does not fit the format.
    #[error("entry {0:?} does not fit the newc format")]
    TooBig(String),
    /// Parsing found something that is not a newc archive.
    #[error("malformed cpio archive at byte {offset}: {what}")]
    Malformed {
        /// Where the problem is.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
}

/// What an archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file with its content.
    File(Vec<u8>),
    /// A character device `major:minor`.
    CharDev(u32, u32),
}

/// One archive entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive, without a leading `/`.
    pub name: String,
    /// Permission bits (the file type comes from `kind`).
    pub perm: u32,
    /// What it is.
    pub kind: EntryKind,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

impl Entry {
    fn mode(&self) -> u32 {
        let ty = match self.kind {
            EntryKind::Dir => S_IFDIR,
            EntryKind::File(_) => S_IFREG,
            EntryKind::CharDev(..) => S_IFCHR,
        };
        ty | (self.perm & 0o7777)
    }
}

/// The entries of moat's guest initramfs: `dirs` as empty directories, `/dev/console`
/// (so the kernel can give init a console before devtmpfs is mounted) and `/init`.
pub fn guest_entries(agent: Vec<u8>, dirs: &[&str]) -> Vec<Entry> {
    let mut entries: Vec<Entry> = dirs
        .iter()
        .map(|d| Entry {
            name: d.trim_start_matches('/').to_string(),
            perm: 0o755,
            kind: EntryKind::Dir,
        })
        .collect();
    if !dirs.iter().any(|d| d.trim_start_matches('/') == "dev") {
        entries.push(Entry {
            name: "dev".into(),
            perm: 0o755,
            kind: EntryKind::Dir,
        });
    }
    entries.push(Entry {
        name: "dev/console".into(),
        perm: 0o600,
        kind: EntryKind::CharDev(5, 1),
    });
    entries.push(Entry {
        name: "init".into(),
        perm: 0o755,
        kind: EntryKind::File(agent),
    });
    entries
}

/// Writes `entries` as a newc archive, then the trailer.
pub fn write_archive<W: Write>(out: &mut W, entries: &[Entry]) -> Result<(), CpioError> {
    let mut offset = 0usize;
    for (i, e) in entries.iter().enumerate() {
        let data: &[u8] = match &e.kind {
            EntryKind::File(d) => d,
            _ => &[],
        };
        let (rmaj, rmin) = match e.kind {
            EntryKind::CharDev(a, b) => (a, b),
            _ => (0, 0),
        };
        let nlink = if matches!(e.kind, EntryKind::Dir) {
            2
        } else {
            1
        };
        // Inode 0 is avoided: some readers treat it as "no inode".
        let ino = u32::try_from(i + 1).map_err(|_| CpioError::TooBig(e.name.clone()))?;
        write_entry(
            out,
            &mut offset,
            &e.name,
            ino,
            e.mode(),
            nlink,
            (rmaj, rmin),
            data,
        )?;
    }
    write_entry(out, &mut offset, TRAILER, 0, 0, 1, (0, 0), &[])?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_entry<W: Write>(
    out: &mut W,
    offset: &mut usize,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    rdev: (u32, u32),
    data: &[u8],
) -> Result<(), CpioError> {
    let too_big = || CpioError::TooBig(name.to_string());
    let namesize = u32::try_from(name.len() + 1).map_err(|_| too_big())?;
    let filesize = u32::try_from(data.len()).map_err(|_| too_big())?;
    // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
    let fields = [
        ino, mode, 0, 0, nlink, 0, filesize, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    let mut header = Vec::with_capacity(110 + name.len() + 4);
    header.extend_from_slice(MAGIC);
    for f in fields {
        header.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    header.extend_from_slice(name.as_bytes());
    header.push(0);
    pad4(&mut header, *offset);
    out.write_all(&header)?;
    *offset += header.len();
    out.write_all(data)?;
    *offset += data.len();
    let mut pad = Vec::new();
    pad4(&mut pad, *offset);
    out.write_all(&pad)?;
    *offset += pad.len();
    Ok(())
}

/// Appends zeros to `buf` until `start + buf.len()` is a multiple of 4.
fn pad4(buf: &mut Vec<u8>, start: usize) {
    while !(start + buf.len()).is_multiple_of(4) {
        buf.push(0);
    }
}

/// Parses a newc archive back into entries (the trailer excluded). Used by tests and by
/// `moat check` to verify an installed image.
pub fn parse_archive(bytes: &[u8]) -> Result<Vec<Entry>, CpioError> {
    let mut entries = Vec::new();
    let mut pos = 0usize;
    let bad = |offset, what| CpioError::Malformed { offset, what };
    loop {
        let header = bytes
            .get(pos..pos + 110)
            .ok_or(bad(pos, "truncated header"))?;
        if &header[..6] != MAGIC {
            return Err(bad(pos, "bad magic (not newc)"));
        }
        let mut fields = [0u32; 13];
        for (i, f) in fields.iter_mut().enumerate() {
            let hex = std::str::from_utf8(&header[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad(pos, "non-ASCII header field"))?;
            *f = u32::from_str_radix(hex, 16).map_err(|_| bad(pos, "non-hex header field"))?;
        }
        let [_, mode, _, _, _, _, filesize, _, _, rmaj, rmin, namesize, _] = fields;
        let name_start = pos + 110;
        let name_end = name_start + namesize as usize;
        let name_bytes = bytes
            .get(name_start..name_end)
            .ok_or(bad(name_start, "truncated name"))?;
        let name = std::str::from_utf8(
            name_bytes
                .strip_suffix(&[0])
                .ok_or(bad(name_start, "name not NUL-terminated"))?,
        )
        .map_err(|_| bad(name_start, "name not UTF-8"))?
        .to_string();
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + filesize as usize;
        let data = bytes
            .get(data_start..data_end)
            .ok_or(bad(data_start, "truncated data"))?;
        pos = data_end.next_multiple_of(4);
        if name == TRAILER {
            return Ok(entries);
        }
        let kind = match mode & 0o170000 {
            S_IFDIR => EntryKind::Dir,
            S_IFREG => EntryKind::File(data.to_vec()),
            S_IFCHR => EntryKind::CharDev(rmaj, rmin),
            _ => return Err(bad(name_start, "unsupported file type")),
        };
        entries.push(Entry {
            name,
            perm: mode & 0o7777,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Entry> {
        guest_entries(
            b"\x7fELF not really an agent".to_vec(),
            &["proc", "sys", "dev", "run"],
        )
    }

    #[test]
    fn round_trips_through_the_parser() {
        let mut bytes = Vec::new();
        write_archive(&mut bytes, &sample()).unwrap();
        assert!(bytes.len().is_multiple_of(4));
        assert_eq!(parse_archive(&bytes).unwrap(), sample());
    }

    #[test]
    fn is_byte_for_byte_reproducible() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        write_archive(&mut a, &sample()).unwrap();
        write_archive(&mut b, &sample()).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn holds_init_console_and_mount_points_only() {
        let names: Vec<_> = sample().into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["proc", "sys", "dev", "run", "dev/console", "init"]);
        let init = sample().pop().unwrap();
        assert_eq!(init.perm, 0o755);
    }

    #[test]
    fn header_fields_follow_newc() {
        let mut bytes = Vec::new();
        write_archive(
            &mut bytes,
            &[Entry {
                name: "init".into(),
                perm: 0o755,
                kind: EntryKind::File(vec![1, 2, 3]),
            }],
        )
        .unwrap();
        let h = std::str::from_utf8(&bytes[..110]).unwrap();
        assert_eq!(&h[..6], "070701");
        assert_eq!(&h[14..22], "000081ed", "mode: regular file 0755");
        assert_eq!(&h[46..54], "00000000", "mtime is zero");
        assert_eq!(&h[54..62], "00000003", "filesize");
        assert_eq!(&h[94..102], "00000005", "namesize counts the NUL");
        assert!(bytes.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn parser_rejects_garbage() {
        assert!(parse_archive(b"").is_err());
        assert!(parse_archive(&[b'0'; 200]).is_err());
        let mut bytes = Vec::new();
        write_archive(&mut bytes, &sample()).unwrap();
        bytes.truncate(bytes.len() - 120);
        assert!(parse_archive(&bytes).is_err());
    }
}
