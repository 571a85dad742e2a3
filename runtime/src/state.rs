//! The state store under `--root` (default `/run/moat`): one directory per container,
//! holding `state.json` (written atomically), a lock file that serializes commands on one
//! container, and the sandbox's sockets, console log and share.
//!
//! ```text
//! <root>/<id>/state.json    the OCI state plus moat's fields
//! <root>/<id>/lock          flock(2)ed by every command that changes the container
//! <root>/<id>/vsock.sock    the hybrid vsock socket: the sandbox process's control path to
//!                           the agent (CONNECT <port>)
//! <root>/<id>/console.log   the guest's serial console
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The default `--root`.
pub const DEFAULT_ROOT: &str = "/run/moat";

/// A failure of the state store.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The id is not acceptable.
    #[error(
        "invalid container id {0:?}: use 1 to 1024 characters from [A-Za-z0-9_+.-], not . or .."
    )]
    BadId(String),
    /// No such container.
    #[error("container {0:?} does not exist")]
    NotFound(String),
    /// The id is taken.
    #[error("container {0:?} already exists")]
    Exists(String),
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `state.json` is corrupt.
    #[error("{path} is corrupt: {source}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Lifecycle status, as runc prints it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Being created.
    Creating,
    /// Created; waiting for start.
    Created,
    /// Running.
    Running,
    /// Frozen.
    Paused,
    /// Exited.
    Stopped,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so that `{:<10}` in `moat list` lines up.
        f.pad(match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

/// What `state.json` holds: the OCI state fields, then moat's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerState {
    /// OCI runtime-spec version of the bundle.
    pub oci_version: String,
    /// Container id.
    pub id: String,
    /// Status.
    pub status: Status,
    /// The sandbox process's host pid (0 when stopped).
    pub pid: u32,
    /// Absolute bundle path.
    pub bundle: PathBuf,
    /// The spec's annotations.
    #[serde(default)]
    pub annotations: std::collections::BTreeMap<String, String>,
    /// Creation time, RFC 3339.
    pub created: String,
    /// The init process's pid in the guest.
    #[serde(default)]
    pub guest_pid: u32,
    /// Exit status once stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// The owner (uid) that created it.
    #[serde(default)]
    pub owner: u32,
}

impl ContainerState {
    /// The state of container `id` from the bundle's spec, created now, owned by uid 0, with
    /// no guest process yet; callers set what they know besides.
    pub fn new(
        id: &str,
        bundle: &Path,
        spec: &oci_spec::runtime::Spec,
        status: Status,
        pid: u32,
    ) -> Self {
        Self {
            oci_version: spec.version().clone(),
            id: id.to_string(),
            status,
            pid,
            bundle: bundle.to_path_buf(),
            annotations: spec
                .annotations()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            created: now_rfc3339(),
            guest_pid: 0,
            exit_status: None,
            owner: 0,
        }
    }
}

/// Checks a container id: it becomes a directory name.
pub fn validate_id(id: &str) -> Result<(), StateError> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+-.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadId(id.to_string()))
    }
}

/// The state root.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// An exclusive lock on one container, released on drop.
#[derive(Debug)]
pub struct Lock(#[allow(dead_code)] nix::fcntl::Flock<File>);

impl Store {
    /// A store at `root` (created when first written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A container's directory.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// Reserves `id`: creates its directory (failing if it exists) and locks it.
    pub fn reserve(&self, id: &str) -> Result<Lock, StateError> {
        validate_id(id)?;
        fs::create_dir_all(&self.root).map_err(io("creating", &self.root))?;
        let dir = self.dir(id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::Exists(id.to_string()))
            }
            Err(e) => return Err(io("creating", &dir)(e)),
        }
        self.lock(id)
    }

    /// Locks an existing container (blocks while another command holds it).
    pub fn lock(&self, id: &str) -> Result<Lock, StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        if !dir.is_dir() {
            return Err(StateError::NotFound(id.to_string()));
        }
        let path = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io("locking", &path)(e.into()))?;
        Ok(Lock(lock))
    }

    /// Writes `state.json` atomically (temp file, fsync, rename).
    pub fn save(&self, st: &ContainerState) -> Result<(), StateError> {
        let dir = self.dir(&st.id);
        let tmp = dir.join("state.json.tmp");
        let path = dir.join("state.json");
        let mut f = File::create(&tmp).map_err(io("writing", &tmp))?;
        let body = serde_json::to_vec_pretty(st).expect("state serializes");
        f.write_all(&body).map_err(io("writing", &tmp))?;
        f.sync_all().map_err(io("syncing", &tmp))?;
        fs::rename(&tmp, &path).map_err(io("renaming", &path))
    }

    /// Reads `state.json`.
    pub fn load(&self, id: &str) -> Result<ContainerState, StateError> {
        validate_id(id)?;
        let path = self.dir(id).join("state.json");
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StateError::NotFound(id.to_string()))
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Every container id in the store, sorted.
    pub fn list(&self) -> Result<Vec<String>, StateError> {
        let rd = match fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &self.root)(e)),
        };
        let mut ids: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("state.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes a container's directory and everything in it.
    pub fn remove(&self, id: &str) -> Result<(), StateError> {
        validate_id(id)?;
        let dir = self.dir(id);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &dir)(e)),
        }
    }
}

/// Now, as RFC 3339 UTC with nanoseconds (as runc prints `created`).
pub fn now_rfc3339() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> (crate::boot::TempDir, Store) {
        let d = crate::boot::TempDir::new("state").unwrap();
        let s = Store::new(d.0.join("root"));
        (d, s)
    }

    fn st(id: &str) -> ContainerState {
        ContainerState {
            oci_version: "1.0.2".into(),
            id: id.into(),
            status: Status::Created,
            pid: 42,
            bundle: "/b".into(),
            annotations: Default::default(),
            created: now_rfc3339(),
            guest_pid: 1,
            exit_status: None,
            owner: 0,
        }
    }

    #[test]
    fn ids_that_could_escape_are_refused() {
        for bad in ["", ".", "..", "../x", "a/b", "x\0y", &"a".repeat(1025)] {
            assert!(
                matches!(validate_id(bad), Err(StateError::BadId(_))),
                "{bad:?}"
            );
        }
        validate_id("c-1_2.3+4").unwrap();
    }

    #[test]
    fn reserve_save_load_list_remove() {
        let (_d, s) = tmp();
        let lock = s.reserve("a").unwrap();
        s.save(&st("a")).unwrap();
        drop(lock);
        assert!(matches!(s.reserve("a"), Err(StateError::Exists(_))));
        assert_eq!(
            s.load("a").unwrap(),
            st("a").clone_with_created(&s.load("a").unwrap().created)
        );
        assert_eq!(s.list().unwrap(), ["a"]);
        assert!(
            !s.dir("a").join("state.json.tmp").exists(),
            "the temp file is renamed away"
        );
        s.remove("a").unwrap();
        assert!(matches!(s.load("a"), Err(StateError::NotFound(_))));
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn locks_serialize_commands_on_one_container() {
        let (_d, s) = tmp();
        let held = s.reserve("b").unwrap();
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let _l = s2.lock("b").unwrap();
            start.elapsed()
        });
        std::thread::sleep(std::time::Duration::from_millis(200));
        drop(held);
        assert!(t.join().unwrap() >= std::time::Duration::from_millis(150));
        assert!(matches!(s.lock("nope"), Err(StateError::NotFound(_))));
    }

    #[test]
    fn corrupt_state_is_reported() {
        let (_d, s) = tmp();
        let _l = s.reserve("c").unwrap();
        fs::write(s.dir("c").join("state.json"), b"{not json").unwrap();
        assert!(matches!(s.load("c"), Err(StateError::Corrupt { .. })));
    }

    #[test]
    fn timestamps_look_like_rfc3339() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(
            t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
            "{t}"
        );
    }

    impl ContainerState {
        fn clone_with_created(&self, created: &str) -> Self {
            Self {
                created: created.into(),
                ..self.clone()
            }
        }
    }
}
