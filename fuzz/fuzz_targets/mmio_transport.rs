//! The virtio-mmio transport under a hostile driver: arbitrary sequences of register reads
//! and writes (any offset, any size, any value), with queue kicks in between, against a
//! virtio-blk device on an in-memory disk. Whatever the order, the transport must never
//! panic, must only activate the device after a complete, valid handshake, and the device
//! must survive whatever queue addresses the driver set.
#![no_main]

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use moat_vmm::devices::bus::BusDevice;
use moat_vmm::devices::virtio::block::Block;
use moat_vmm::devices::virtio::mmio::{status, MmioTransport};
use moat_vmm::devices::virtio::test_utils::CountingInterrupt;
use vm_memory::{GuestAddress, GuestMemoryMmap};

fn disk() -> File {
    // SAFETY: a valid NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd was just created and is owned by nobody else.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(64 * 512).unwrap();
    f
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let dev = Block::from_file(disk(), 64, data.first().is_some_and(|b| b & 1 == 1), "fuzz");
    let irq = Arc::new(CountingInterrupt::default());
    let mut t = MmioTransport::new(Box::new(dev), mem, irq, Arc::new(AtomicU32::new(0))).unwrap();
    let mut it = data.chunks_exact(8);
    for op in &mut it {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x140);
        let len = [1usize, 2, 4, 8][(op[0] >> 1) as usize % 4];
        let value = u32::from_le_bytes([op[3], op[4], op[5], op[6]]);
        match op[0] % 8 {
            0 | 1 => {
                let mut buf = [0u8; 8];
                t.read(offset, &mut buf[..len]);
            }
            2 => t.queue_event(usize::from(op[7] % 3)),
            _ => {
                let mut buf = [0u8; 8];
                buf[..4].copy_from_slice(&value.to_le_bytes());
                t.write(offset, &buf[..len]);
            }
        }
        let s = t.status();
        if t.is_active() {
            assert_ne!(s & status::DRIVER_OK, 0);
            assert_ne!(s & status::FEATURES_OK, 0);
        }
    }
});
