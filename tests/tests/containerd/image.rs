//! A busybox OCI image built here, no registry: one uncompressed layer (busybox-static and
//! its applet links), a config, a manifest, in an OCI image layout tar that
//! `ctr images import` reads. Two tags share the layer: `moat-busybox` (`sh`) and
//! `moat-pause` (sleeps until killed; the CRI plugin's sandbox image).

use std::path::Path;

use sha2::{Digest, Sha256};

/// The image for containers.
pub const BUSYBOX: &str = "docker.io/library/moat-busybox:latest";
/// The image for pod sandboxes.
pub const PAUSE: &str = "docker.io/library/moat-pause:latest";

const LAYER_TYPE: &str = "application/vnd.oci.image.layer.v1.tar";
const CONFIG_TYPE: &str = "application/vnd.oci.image.config.v1+json";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A minimal ustar writer: directories, regular files and symlinks, owned by root.
#[derive(Default)]
pub struct Tar(Vec<u8>);

impl Tar {
    fn header(&mut self, name: &str, mode: u32, size: usize, kind: u8, link: &str) {
        assert!(
            name.len() < 100 && link.len() < 100,
            "{name}: name too long"
        );
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, mode.into());
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size as u64);
        octal(&mut h, 136, 12, 1_700_000_000);
        h[148..156].fill(b' ');
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.0.extend_from_slice(&h);
    }

    /// A directory (`name` ends with `/`).
    pub fn dir(&mut self, name: &str) {
        self.header(name, 0o755, 0, b'5', "");
    }

    /// A regular file.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.header(name, mode, data.len(), b'0', "");
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
    }

    /// A symlink.
    pub fn symlink(&mut self, name: &str, target: &str) {
        self.header(name, 0o777, 0, b'2', target);
    }

    /// The archive, with its end-of-archive blocks.
    pub fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn digest(data: &[u8]) -> String {
    let h = Sha256::digest(data);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, data: &[u8]) -> serde_json::Value {
    serde_json::json!({ "mediaType": media_type, "digest": digest(data), "size": data.len() })
}

/// The layer: busybox at /bin/busybox, every applet a link to it, the usual directories.
fn layer() -> Vec<u8> {
    let busybox = std::fs::read("/bin/busybox")
        .expect("/bin/busybox (Debian's busybox-static; run scripts/setup-host.sh)");
    let list = std::process::Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("busybox --list");
    let mut t = Tar::default();
    for d in [
        "bin/", "dev/", "etc/", "proc/", "root/", "sys/", "tmp/", "var/", "run/",
    ] {
        t.dir(d);
    }
    t.file("bin/busybox", 0o755, &busybox);
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet != "busybox" {
            t.symlink(&format!("bin/{applet}"), "busybox");
        }
    }
    t.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    t.file("etc/group", 0o644, b"root:x:0:\n");
    t.finish()
}

/// Writes the OCI image layout tar holding both tags to `out`.
pub fn write_layout(out: &Path) {
    let layer = layer();
    let mut t = Tar::default();
    t.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#);
    t.dir("blobs/");
    t.dir("blobs/sha256/");
    let blob = |t: &mut Tar, data: &[u8]| {
        let d = digest(data);
        t.file(
            &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
            0o644,
            data,
        );
    };
    blob(&mut t, &layer);
    let mut manifests = Vec::new();
    for (name, cmd) in [
        (BUSYBOX, vec!["sh"]),
        (
            PAUSE,
            vec![
                "sh",
                "-c",
                "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done",
            ],
        ),
    ] {
        let config = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": cmd,
                "WorkingDir": "/",
            },
            "rootfs": { "type": "layers", "diff_ids": [digest(&layer)] },
        })
        .to_string()
        .into_bytes();
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": descriptor(CONFIG_TYPE, &config),
            "layers": [descriptor(LAYER_TYPE, &layer)],
        })
        .to_string()
        .into_bytes();
        blob(&mut t, &config);
        blob(&mut t, &manifest);
        let mut d = descriptor(MANIFEST_TYPE, &manifest);
        d["annotations"] = serde_json::json!({
            "io.containerd.image.name": name,
            "org.opencontainers.image.ref.name": "latest",
        });
        d["platform"] = serde_json::json!({ "architecture": "amd64", "os": "linux" });
        manifests.push(d);
    }
    let index = serde_json::json!({ "schemaVersion": 2, "manifests": manifests })
        .to_string()
        .into_bytes();
    t.file("index.json", 0o644, &index);
    std::fs::write(out, t.finish()).expect("writing the image archive");
}

#[test]
fn the_tar_writer_makes_archives_gnu_tar_reads() {
    let d = std::env::temp_dir().join(format!("moat-tar-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let mut t = Tar::default();
    t.dir("a/");
    t.file("a/f", 0o600, b"hello");
    t.symlink("a/l", "f");
    std::fs::write(d.join("x.tar"), t.finish()).unwrap();
    let out = std::process::Command::new("tar")
        .args(["-tvf"])
        .arg(d.join("x.tar"))
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(list.contains("a/f") && list.contains("a/l -> f"), "{list}");
    std::fs::remove_dir_all(d).unwrap();
}
