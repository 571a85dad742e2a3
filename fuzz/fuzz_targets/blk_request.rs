//! The virtio-blk request path under a hostile driver: descriptor chains built from the fuzz
//! input (well-formed requests of every type with fuzzed sectors, lengths and directions, and
//! raw descriptors with arbitrary addresses, lengths, flags and next indices, loops
//! included) go through the request parser and the device, on an in-memory disk. The device
//! must never panic, must return every in-range chain it pops, and must never touch the disk
//! beyond its capacity.
#![no_main]

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use moat_fuzz::Input;
use moat_vmm::devices::virtio::block::Block;
use moat_vmm::devices::virtio::test_utils::CountingInterrupt;
use moat_vmm::devices::virtio::vsock::test_utils::TestQueue;
use moat_vmm::devices::virtio::{ActivateContext, VirtioDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const SECTORS: u64 = 32;

fn disk() -> File {
    // SAFETY: a valid NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd was just created and is owned by nobody else.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(SECTORS * 512).unwrap();
    f
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let mut q = TestQueue::create(&mem, 0, 1 << 20, 2 << 20);
    let file = disk();
    let mut dev = Block::from_file(file.try_clone().unwrap(), SECTORS, false, "fuzz");
    dev.activate(ActivateContext {
        mem: mem.clone(),
        interrupt: Arc::new(CountingInterrupt::default()),
        queues: vec![q.queue()],
        acked_features: 0,
        queue_evts: Arc::new(Vec::new()),
    })
    .unwrap();
    let mut input = Input(data);
    let mut steps = 0;
    let mut buf_at = 3u64 << 20;
    while !input.0.is_empty() && steps < 64 {
        steps += 1;
        match input.u8() % 4 {
            0 => {
                // A request: header, data descriptors, status; fields fuzzed.
                let t = [0u32, 1, 4, 8, 11, 13, input.u32()][input.u8() as usize % 7];
                let sector = u64::from(input.u32()) % (SECTORS * 2);
                let mut hdr = [0u8; 16];
                hdr[..4].copy_from_slice(&t.to_le_bytes());
                hdr[8..].copy_from_slice(&sector.to_le_bytes());
                let h = buf_at;
                mem.write_slice(&hdr, GuestAddress(h)).unwrap();
                let mut descs = vec![(h, 16 + u32::from(input.u8() % 2), false)];
                let n = input.u8() % 4;
                for _ in 0..n {
                    let len = u32::from(input.u16() % 4096);
                    let addr = (3 << 20) + 0x1000 + u64::from(input.u16()) * 16;
                    descs.push((addr, len, input.u8() & 1 == 1));
                }
                descs.push((
                    buf_at + 32,
                    1 + u32::from(input.u8() % 2),
                    input.u8() & 3 != 0,
                ));
                buf_at = (3 << 20) + u64::from(input.u16() % 256) * 64;
                if q.room() > descs.len() + 1 {
                    q.add_descs(&descs);
                }
            }
            1 => {
                // Raw descriptors: any address, length, flags, next.
                let n = 1 + (input.u8() % 8) as u16;
                let head = input.u8() as u16;
                for i in 0..n {
                    let addr = u64::from(input.u32() % (5 << 20));
                    let len = u32::from(input.u16());
                    let flags = u16::from(input.u8() & 0x7);
                    let next = input.u8() as u16;
                    q.store_desc((head + i) % 256, addr, len, flags, next);
                }
                if q.room() > 0 {
                    q.publish(head);
                }
            }
            2 => {
                if q.room() > 0 {
                    q.publish(input.u16());
                }
            }
            _ => {
                dev.process_queue();
                q.take_used();
            }
        }
    }
    dev.process_queue();
    assert!(file.metadata().unwrap().len() <= SECTORS * 512);
});
