//! Boot loading against tiny hand-made ELF images: one PT_LOAD segment, with or without
//! the PVH note.

use std::io::Write;

use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const LOAD_ADDR: u64 = 0x100_0000;
const PVH_ENTRY: u32 = 0x100_0040;

/// An ELF64 image with one PT_LOAD of `code` at 16 MiB and, if `pvh`, a Xen PHYS32_ENTRY note.
fn tiny_elf(code: &[u8], pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let phoff = 64u64;
    let data_off = phoff + 56 * u64::from(phnum);
    let mut note = Vec::new();
    if pvh {
        note.extend_from_slice(&4u32.to_le_bytes()); // namesz
        note.extend_from_slice(&4u32.to_le_bytes()); // descsz
        note.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&PVH_ENTRY.to_le_bytes());
    }
    let code_off = data_off + note.len() as u64;
    let mut e = Vec::new();
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    e.extend_from_slice(&[0; 8]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    e.extend_from_slice(&phoff.to_le_bytes());
    e.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    e.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    e.extend_from_slice(&phnum.to_le_bytes());
    e.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    let phdr = |e: &mut Vec<u8>, ty: u32, off: u64, addr: u64, len: u64| {
        e.extend_from_slice(&ty.to_le_bytes());
        e.extend_from_slice(&5u32.to_le_bytes());
        e.extend_from_slice(&off.to_le_bytes());
        e.extend_from_slice(&addr.to_le_bytes());
        e.extend_from_slice(&addr.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        e.extend_from_slice(&len.to_le_bytes());
        e.extend_from_slice(&4u64.to_le_bytes());
    };
    phdr(&mut e, 1, code_off, LOAD_ADDR, code.len() as u64);
    if pvh {
        phdr(&mut e, 4, data_off, 0, note.len() as u64);
    }
    e.extend_from_slice(&note);
    e.extend_from_slice(code);
    e
}

struct Files {
    dir: PathBuf,
}

impl Files {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("moat-boot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self { dir }
    }
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.join(name);
        std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
        p
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
}

fn source(f: &Files, pvh: bool, initrd: Option<&[u8]>) -> BootSource {
    BootSource {
        kernel: f.write("vmlinux", &tiny_elf(&[0xf4; 16], pvh)),
        initramfs: initrd.map(|b| f.write("initrd", b)),
        cmdline: "console=ttyS0 panic=-1".into(),
        force_linux_boot: false,
    }
}

#[test]
fn pvh_kernel_gets_start_info_memmap_and_module() {
    let f = Files::new("pvh");
    let m = mem();
    let initrd = vec![0x5a; 10_000];
    let entry = load(&m, &source(&f, true, Some(&initrd)), 2).unwrap();
    assert_eq!(entry.protocol, BootProtocol::Pvh);
    assert_eq!(entry.entry, GuestAddress(u64::from(PVH_ENTRY)));
    let info: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
    assert_eq!(info.magic, XEN_HVM_START_MAGIC_VALUE);
    assert_eq!(info.cmdline_paddr, CMDLINE_START);
    assert_eq!(info.nr_modules, 1);
    let module: [u64; 2] = m.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
    assert_eq!(module[1], 10_000);
    assert_eq!(module[0] % 4096, 0);
    let end = module[0] + module[1];
    assert!(
        end <= 64 << 20 && end + 4096 > 64 << 20,
        "initramfs at the top of RAM"
    );
    let mut back = vec![0u8; 10_000];
    m.read_slice(&mut back, GuestAddress(module[0])).unwrap();
    assert_eq!(back, initrd);
    assert_eq!(info.memmap_entries, 2);
    let e1: hvm_memmap_table_entry = m.read_obj(GuestAddress(info.memmap_paddr + 24)).unwrap();
    assert_eq!(
        (e1.addr, e1.addr + e1.size, e1.type_),
        (HIMEM_START, 64 << 20, E820_RAM)
    );
    let mut cmd = [0u8; 23];
    m.read_slice(&mut cmd, GuestAddress(CMDLINE_START)).unwrap();
    assert_eq!(&cmd, b"console=ttyS0 panic=-1\0");
    let code: u8 = m.read_obj(GuestAddress(LOAD_ADDR)).unwrap();
    assert_eq!(code, 0xf4);
}

#[test]
fn kernel_without_pvh_note_uses_the_linux_boot_protocol() {
    let f = Files::new("linux");
    let m = mem();
    let entry = load(&m, &source(&f, false, Some(b"cpio")), 1).unwrap();
    assert_eq!(entry.protocol, BootProtocol::Linux);
    assert_eq!(entry.entry, GuestAddress(LOAD_ADDR));
    let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
    let (magic, flag, ptr, size) = (
        p.hdr.header,
        p.hdr.boot_flag,
        p.hdr.cmd_line_ptr,
        p.hdr.ramdisk_size,
    );
    assert_eq!((magic, flag), (KERNEL_HDR_MAGIC, KERNEL_BOOT_FLAG_MAGIC));
    assert_eq!(ptr as u64, CMDLINE_START);
    assert_eq!(size, 4);
    assert_eq!(p.e820_entries, 2);
}

#[test]
fn forced_linux_boot_ignores_the_note() {
    let f = Files::new("forced");
    let mut src = source(&f, true, None);
    src.force_linux_boot = true;
    assert_eq!(load(&mem(), &src, 1).unwrap().protocol, BootProtocol::Linux);
}

#[test]
fn bad_inputs_are_errors() {
    let f = Files::new("bad");
    let m = mem();
    let mut src = source(&f, true, None);
    src.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
    assert!(matches!(load(&m, &src, 1), Err(BootError::Cmdline { .. })));
    let src = source(&f, true, Some(&vec![0; 60 << 20]));
    assert!(matches!(
        load(&m, &src, 1),
        Err(BootError::InitrdTooBig { .. })
    ));
    let mut src = source(&f, true, None);
    src.kernel = f.write(
        "notelf",
        b"MZ not an elf at all, sorry, not at all.........................",
    );
    assert!(matches!(load(&m, &src, 1), Err(BootError::Kernel(_))));
    src.kernel = f.dir.join("missing");
    assert!(matches!(load(&m, &src, 1), Err(BootError::Open { .. })));
}

#[test]
fn big_guests_reserve_the_mmio_gap() {
    let m = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), MMIO_GAP_START as usize),
        (GuestAddress(FIRST_ADDR_PAST_32BITS), 1 << 20),
    ])
    .unwrap();
    let map = e820_map(&m);
    assert_eq!(map.len(), 4);
    assert_eq!(map[1].0 + map[1].1, MMIO_GAP_START);
    assert_eq!(map[2].2, E820_RESERVED);
    assert_eq!(map[3], (FIRST_ADDR_PAST_32BITS, 1 << 20, E820_RAM));
}
