//! Legacy PC devices on the port I/O bus: the 8250 UART on COM1 (the console) and the i8042
//! controller (only for its reset line), both from `vm-superio`.

pub mod i8042;
pub mod serial;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

pub use i8042::I8042;
pub use serial::{SerialConsole, SerialOutput};

/// A `vm-superio` trigger that writes an eventfd (an irqfd for interrupts, a plain eventfd
/// for the i8042 reset line).
#[derive(Debug)]
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.write(1)
    }
}
