//! The i8042 keyboard controller at ports `0x60`–`0x64`, for its one job in a microVM: the
//! guest writes the reset command (`0xfe` to `0x64`, Linux's `reboot=k`) and the VM ends.
//! The reset line is an eventfd the event loop watches.

use vm_superio::I8042Device;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// The controller's first port.
pub const I8042_PORT: u64 = 0x60;
/// Ports 0x60 to 0x64.
pub const I8042_LEN: u64 = 5;

/// The controller.
pub struct I8042 {
    dev: I8042Device<EventFdTrigger>,
}

impl std::fmt::Debug for I8042 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller whose reset writes `reset`.
    pub fn new(reset: EventFdTrigger) -> Self {
        Self {
            dev: I8042Device::new(reset),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), &mut *data) {
            (Ok(off), [b]) => *b = self.dev.read(off),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), data) {
            if let Err(e) = self.dev.write(off, *b) {
                tracing::warn!("i8042 reset line: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    #[test]
    fn reset_command_signals_the_reset_line() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut k = I8042::new(EventFdTrigger(evt.try_clone().unwrap()));
        k.write(4, &[0x20]); // read command byte: no reset
        assert!(evt.read().is_err());
        k.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
