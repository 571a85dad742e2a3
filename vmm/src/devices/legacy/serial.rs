//! The console: a 16550A UART at COM1 (`0x3f8`, IRQ 4) whose output goes to a file, a pipe
//! or nowhere. Input is not wired: moat's guests are driven over vsock.
//!
//! Data flow: guest `outb` to THR → vCPU exit → [`SerialConsole::write`] → `vm-superio`
//! → the output writer (line buffered). The THR-empty interrupt goes out through an irqfd.

use std::fs::File;
use std::io::{LineWriter, Write};

use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// COM1's port base.
pub const COM1_PORT: u64 = 0x3f8;
/// Its eight registers.
pub const COM1_LEN: u64 = 8;

/// Where the console goes.
#[derive(Debug)]
pub enum SerialOutput {
    /// Nowhere.
    Sink,
    /// A file or pipe (written line by line).
    File(File),
}

impl SerialOutput {
    fn into_writer(self) -> Box<dyn Write + Send> {
        match self {
            SerialOutput::Sink => Box::new(std::io::sink()),
            SerialOutput::File(f) => Box::new(LineWriter::new(f)),
        }
    }
}

/// The UART on the port I/O bus.
pub struct SerialConsole {
    serial: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
    write_errors: u64,
}

impl std::fmt::Debug for SerialConsole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialConsole")
            .field("write_errors", &self.write_errors)
            .finish_non_exhaustive()
    }
}

impl SerialConsole {
    /// A UART raising `irq` and writing to `out`.
    pub fn new(irq: EventFdTrigger, out: SerialOutput) -> Self {
        Self {
            serial: Serial::new(irq, out.into_writer()),
            write_errors: 0,
        }
    }

    /// Flushes buffered output (on VM exit).
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let (Ok(off), [b]) = (u8::try_from(offset), &mut *data) {
            *b = self.serial.read(off);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(off), [b]) = (u8::try_from(offset), data) else {
            return;
        };
        if let Err(e) = self.serial.write(off, *b) {
            // A full disk or a closed pipe must not stop the guest; count and go on.
            self.write_errors += 1;
            if self.write_errors == 1 {
                tracing::warn!("console output: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    #[test]
    fn guest_bytes_reach_the_file_and_raise_the_irq() {
        let path = std::env::temp_dir().join(format!("moat-serial-{}", std::process::id()));
        let f = File::create(&path).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialConsole::new(
            EventFdTrigger(irq.try_clone().unwrap()),
            SerialOutput::File(f),
        );
        // IER: THR empty interrupt on.
        s.write(1, &[0x2]);
        for b in b"Run /init\n" {
            s.write(0, &[*b]);
        }
        s.flush();
        let mut out = String::new();
        File::open(&path).unwrap().read_to_string(&mut out).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(out, "Run /init\n");
        assert!(irq.read().unwrap() > 0);
        // LSR says the transmitter is empty.
        let mut lsr = [0u8];
        s.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0);
        // Odd sizes are ignored.
        s.write(0, &[1, 2]);
        let mut two = [9u8; 2];
        s.read(0, &mut two);
        assert_eq!(two, [0, 0]);
    }
}
