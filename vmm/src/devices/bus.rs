//! Port I/O and MMIO buses: address ranges mapped to devices. The vCPU threads dispatch
//! their `KVM_EXIT_IO` and `KVM_EXIT_MMIO` exits here; a device sees its offset within its
//! range. Built once before the vCPUs start and immutable afterwards, so lookups take no lock
//! beyond the device's own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus.
pub trait BusDevice: Send {
    /// A read of `data.len()` bytes at `offset` within the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A write of `data` at `offset` within the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Adding a device failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The range is empty or overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} is empty or overlaps another device")]
    Overlap {
        /// Start.
        base: u64,
        /// Length.
        len: u64,
    },
}

/// A shared device.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Address ranges to devices.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, (u64, SharedDevice)>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.devices.iter().map(|(b, (l, _))| (b, l)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base + len)` to `dev`.
    pub fn insert(&mut self, dev: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let Some(end) = end else {
            return Err(BusError::Overlap { base, len });
        };
        let before = self.devices.range(..end).next_back();
        if let Some((b, (l, _))) = before {
            if b + l > base {
                return Err(BusError::Overlap { base, len });
            }
        }
        self.devices.insert(base, (len, dev));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        let (base, (len, dev)) = self.devices.range(..=addr).next_back()?;
        (addr - base < *len).then_some((addr - base, dev))
    }

    /// Dispatches a read; false when nothing is mapped at `addr` (`data` is then untouched).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).read(off, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; false when nothing is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((off, dev)) => {
                lock(dev).write(off, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering it if a thread panicked while holding it (the device state is
/// then whatever that thread left; the guest sees a device in some state rather than the
/// VMM aborting).
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder(Vec<(bool, u64, usize)>);

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
            self.0.push((false, offset, data.len()));
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((true, offset, data.len()));
        }
    }

    #[test]
    fn dispatches_by_range_and_refuses_overlaps() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 5).unwrap();
        assert!(bus.insert(b.clone(), 0x3f0, 9).is_err());
        assert!(bus.insert(b.clone(), 0x3ff, 1).is_err());
        assert!(bus.insert(b.clone(), 0x100, 0).is_err());
        bus.insert(b.clone(), 0x400, 1).unwrap();
        let mut d = [0u8; 1];
        assert!(bus.read(0x3fd, &mut d));
        assert_eq!(d[0], 5);
        assert!(bus.write(0x64, &[0xfe]));
        assert!(!bus.write(0x3f7, &[0]));
        assert!(!bus.read(0x65, &mut d));
        assert_eq!(lock(&a).0, vec![(false, 5, 1)]);
        assert_eq!(lock(&b).0, vec![(true, 4, 1)]);
    }
}
