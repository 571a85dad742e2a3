//! A mount's `options` words, read with runc's table: each word either sets or clears a
//! mount(2) flag, asks for a propagation change (made by a separate mount call after the
//! mount), or is filesystem data (`mode=755`, `size=65536k`, `newinstance`, ...).
//!
//! Unknown words go to the data string, as runc does: the filesystem is the judge of its
//! own options, and mount(2) fails with `EINVAL` on a word it does not take. The exception
//! is bind mounts, whose data the kernel ignores; [`super::validate_mounts`] rejects a
//! leftover word there (a typo such as `rbindd` would otherwise be dropped silently).
//!
//! Recursive mount attributes (`rro`, `rnosuid`, ...), `idmap`/`ridmap` and runc's
//! `tmpcopyup` need mount_setattr(2), ID-mapped mounts or a copy step that this runtime does
//! not implement; they are refused, never ignored.

use nix::mount::MsFlags;

/// The `nosymfollow` flag (Linux 5.10), which nix has no name for.
pub const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);

/// What one mount's `options` ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call itself (`MS_BIND`, `MS_REC`, `MS_RDONLY`, `MS_NOSUID`, ...).
    pub flags: MsFlags,
    /// Propagation changes (`MS_PRIVATE`, `MS_SLAVE | MS_REC`, ...), in the order given; each
    /// is a mount call of its own after the mount.
    pub propagation: Vec<MsFlags>,
    /// Words for the filesystem, each with its index in `options`.
    pub data: Vec<(usize, String)>,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            flags: MsFlags::empty(),
            propagation: Vec::new(),
            data: Vec::new(),
        }
    }
}

impl MountOptions {
    /// Whether the options ask for a bind mount (`bind` or `rbind`).
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// The data string for mount(2): the data words joined with commas, `None` if there are
    /// none.
    pub fn data_string(&self) -> Option<String> {
        if self.data.is_empty() {
            return None;
        }
        let words: Vec<&str> = self.data.iter().map(|(_, w)| w.as_str()).collect();
        Some(words.join(","))
    }

    /// The flags a bind mount must be remounted with to take effect: all but `MS_BIND`,
    /// `MS_REC` and `MS_REMOUNT` (the kernel ignores the others on the first bind).
    pub fn remount_flags(&self) -> MsFlags {
        self.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT)
    }
}

/// What a flag word does: sets its flag, or clears it (`rw`, `suid`, `dev`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Set(MsFlags),
    Clear(MsFlags),
}

/// runc's flag table, plus the few words mount(8) also takes (`lazytime`, `iversion`,
/// `silent`, `symfollow`).
fn flag_word(word: &str) -> Option<Effect> {
    use Effect::{Clear, Set};
    let e = match word {
        "defaults" => Set(MsFlags::empty()),
        "ro" => Set(MsFlags::MS_RDONLY),
        "rw" => Clear(MsFlags::MS_RDONLY),
        "nosuid" => Set(MsFlags::MS_NOSUID),
        "suid" => Clear(MsFlags::MS_NOSUID),
        "nodev" => Set(MsFlags::MS_NODEV),
        "dev" => Clear(MsFlags::MS_NODEV),
        "noexec" => Set(MsFlags::MS_NOEXEC),
        "exec" => Clear(MsFlags::MS_NOEXEC),
        "sync" => Set(MsFlags::MS_SYNCHRONOUS),
        "async" => Clear(MsFlags::MS_SYNCHRONOUS),
        "dirsync" => Set(MsFlags::MS_DIRSYNC),
        "remount" => Set(MsFlags::MS_REMOUNT),
        "mand" => Set(MsFlags::MS_MANDLOCK),
        "nomand" => Clear(MsFlags::MS_MANDLOCK),
        "noatime" => Set(MsFlags::MS_NOATIME),
        "atime" => Clear(MsFlags::MS_NOATIME),
        "nodiratime" => Set(MsFlags::MS_NODIRATIME),
        "diratime" => Clear(MsFlags::MS_NODIRATIME),
        "relatime" => Set(MsFlags::MS_RELATIME),
        "norelatime" => Clear(MsFlags::MS_RELATIME),
        "strictatime" => Set(MsFlags::MS_STRICTATIME),
        "nostrictatime" => Clear(MsFlags::MS_STRICTATIME),
        "lazytime" => Set(MsFlags::MS_LAZYTIME),
        "nolazytime" => Clear(MsFlags::MS_LAZYTIME),
        "iversion" => Set(MsFlags::MS_I_VERSION),
        "noiversion" => Clear(MsFlags::MS_I_VERSION),
        "silent" => Set(MsFlags::MS_SILENT),
        "loud" => Clear(MsFlags::MS_SILENT),
        "nosymfollow" => Set(MS_NOSYMFOLLOW),
        "symfollow" => Clear(MS_NOSYMFOLLOW),
        "bind" => Set(MsFlags::MS_BIND),
        "rbind" => Set(MsFlags::MS_BIND.union(MsFlags::MS_REC)),
        _ => return None,
    };
    Some(e)
}

/// The propagation words, for `options` and for `linux.rootfsPropagation`.
pub fn parse_propagation(word: &str) -> Option<MsFlags> {
    let rec = MsFlags::MS_REC;
    let f = match word {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | rec,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | rec,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | rec,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | rec,
        _ => return None,
    };
    Some(f)
}

/// Words runc knows that this runtime refuses, with the reason.
fn unsupported(word: &str) -> Option<&'static str> {
    const RECURSIVE: &[&str] = &[
        "rro",
        "rrw",
        "rnosuid",
        "rsuid",
        "rnodev",
        "rdev",
        "rnoexec",
        "rexec",
        "rnodiratime",
        "rdiratime",
        "rrelatime",
        "rnorelatime",
        "rnoatime",
        "ratime",
        "rstrictatime",
        "rnostrictatime",
        "rnosymfollow",
        "rsymfollow",
    ];
    if RECURSIVE.contains(&word) {
        return Some("recursive mount attributes (mount_setattr(2)) are not supported");
    }
    match word {
        "idmap" | "ridmap" => Some("ID-mapped mounts are not supported"),
        "tmpcopyup" => Some("tmpcopyup is not supported"),
        _ => None,
    }
}

/// Reads a mount's `options` with runc's table (see the module doc). On a word that cannot be
/// used, returns its index and why.
pub fn parse_mount_options(opts: &[String]) -> Result<MountOptions, (usize, String)> {
    let mut out = MountOptions::default();
    for (i, word) in opts.iter().enumerate() {
        if word.is_empty() {
            return Err((i, "empty mount option".to_string()));
        }
        if let Some(effect) = flag_word(word) {
            match effect {
                Effect::Set(f) => out.flags |= f,
                Effect::Clear(f) => out.flags -= f,
            }
        } else if let Some(p) = parse_propagation(word) {
            out.propagation.push(p);
        } else if let Some(why) = unsupported(word) {
            return Err((i, format!("mount option {word:?}: {why}")));
        } else {
            out.data.push((i, word.clone()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<MountOptions, (usize, String)> {
        let v: Vec<String> = words.iter().map(|w| w.to_string()).collect();
        parse_mount_options(&v)
    }

    fn flags(words: &[&str]) -> MsFlags {
        parse(words).unwrap().flags
    }

    #[test]
    fn every_flag_word_sets_its_flag() {
        let table = [
            ("ro", MsFlags::MS_RDONLY),
            ("nosuid", MsFlags::MS_NOSUID),
            ("nodev", MsFlags::MS_NODEV),
            ("noexec", MsFlags::MS_NOEXEC),
            ("sync", MsFlags::MS_SYNCHRONOUS),
            ("dirsync", MsFlags::MS_DIRSYNC),
            ("remount", MsFlags::MS_REMOUNT),
            ("mand", MsFlags::MS_MANDLOCK),
            ("noatime", MsFlags::MS_NOATIME),
            ("nodiratime", MsFlags::MS_NODIRATIME),
            ("relatime", MsFlags::MS_RELATIME),
            ("strictatime", MsFlags::MS_STRICTATIME),
            ("lazytime", MsFlags::MS_LAZYTIME),
            ("iversion", MsFlags::MS_I_VERSION),
            ("silent", MsFlags::MS_SILENT),
            ("nosymfollow", MS_NOSYMFOLLOW),
            ("bind", MsFlags::MS_BIND),
            ("rbind", MsFlags::MS_BIND | MsFlags::MS_REC),
        ];
        for (word, flag) in table {
            let o = parse(&[word]).unwrap();
            assert_eq!(o.flags, flag, "{word}");
            assert!(o.propagation.is_empty() && o.data.is_empty(), "{word}");
        }
        assert_eq!(flags(&["defaults"]), MsFlags::empty());
        assert_eq!(MS_NOSYMFOLLOW.bits(), 0x100);
    }

    #[test]
    fn every_clearing_word_undoes_its_flag() {
        let pairs = [
            ("ro", "rw"),
            ("nosuid", "suid"),
            ("nodev", "dev"),
            ("noexec", "exec"),
            ("sync", "async"),
            ("mand", "nomand"),
            ("noatime", "atime"),
            ("nodiratime", "diratime"),
            ("relatime", "norelatime"),
            ("strictatime", "nostrictatime"),
            ("lazytime", "nolazytime"),
            ("iversion", "noiversion"),
            ("silent", "loud"),
            ("nosymfollow", "symfollow"),
        ];
        for (set, clear) in pairs {
            assert_eq!(flags(&[set, clear]), MsFlags::empty(), "{set},{clear}");
            assert_eq!(flags(&[clear]), MsFlags::empty(), "{clear}");
            assert_ne!(flags(&[clear, set]), MsFlags::empty(), "{clear},{set}");
        }
    }

    #[test]
    fn propagation_words_are_separate_calls_in_order() {
        let rec = MsFlags::MS_REC;
        let table = [
            ("private", MsFlags::MS_PRIVATE),
            ("rprivate", MsFlags::MS_PRIVATE | rec),
            ("shared", MsFlags::MS_SHARED),
            ("rshared", MsFlags::MS_SHARED | rec),
            ("slave", MsFlags::MS_SLAVE),
            ("rslave", MsFlags::MS_SLAVE | rec),
            ("unbindable", MsFlags::MS_UNBINDABLE),
            ("runbindable", MsFlags::MS_UNBINDABLE | rec),
        ];
        for (word, flag) in table {
            let o = parse(&[word]).unwrap();
            assert_eq!(o.flags, MsFlags::empty(), "{word}");
            assert_eq!(o.propagation, [flag], "{word}");
        }
        let o = parse(&["rbind", "rslave", "ro", "private"]).unwrap();
        assert_eq!(o.flags, MsFlags::MS_BIND | rec | MsFlags::MS_RDONLY);
        assert_eq!(
            o.propagation,
            [MsFlags::MS_SLAVE | rec, MsFlags::MS_PRIVATE]
        );
    }

    #[test]
    fn other_words_are_data_in_order() {
        let o = parse(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ])
        .unwrap();
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(
            o.data_string().as_deref(),
            Some("newinstance,ptmxmode=0666,mode=0620,gid=5")
        );
        assert_eq!(o.data[0], (2, "newinstance".to_string()));
        assert_eq!(parse(&["ro"]).unwrap().data_string(), None);
        // runc passes unknown words on as data; the filesystem judges them.
        assert_eq!(
            parse(&["size=1m", "rbindd"])
                .unwrap()
                .data_string()
                .as_deref(),
            Some("size=1m,rbindd")
        );
    }

    #[test]
    fn recursive_idmap_copyup_and_empty_words_are_refused() {
        for word in ["rro", "rrw", "rnosuid", "rnoexec", "ratime", "rnosymfollow"] {
            let (i, msg) = parse(&["rbind", word]).unwrap_err();
            assert_eq!(i, 1);
            assert!(msg.contains("recursive mount attributes"), "{msg}");
            assert!(msg.contains(&format!("{word:?}")), "{msg}");
        }
        assert!(parse(&["idmap"]).unwrap_err().1.contains("ID-mapped"));
        assert!(parse(&["ridmap"]).unwrap_err().1.contains("ID-mapped"));
        assert!(parse(&["tmpcopyup"]).unwrap_err().1.contains("tmpcopyup"));
        assert_eq!(
            parse(&["ro", ""]).unwrap_err(),
            (1, "empty mount option".to_string())
        );
    }

    #[test]
    fn remount_flags_drop_bind_rec_and_remount() {
        let o = parse(&["rbind", "ro", "nosuid", "remount"]).unwrap();
        assert!(o.is_bind());
        assert_eq!(o.remount_flags(), MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(parse(&["rbind"]).unwrap().remount_flags(), MsFlags::empty());
        assert!(!parse(&["ro"]).unwrap().is_bind());
    }
}
