//! The byte streams beside the control connection (a process's stdin, stdout, stderr or
//! terminal over vsock): both sides pump them the same way.

use std::io::{ErrorKind, Read, Write};

/// Copies `from` to `to` until `from` ends or either side fails (EIO from a pty master
/// whose last slave closed is the normal end of a terminal session), flushing after each
/// write so that output is never held back; returns the bytes copied. A failed write ends
/// the pump quietly: the reader on the far side went away.
pub fn pump(from: &mut impl Read, to: &mut impl Write) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() || to.flush().is_err() {
                    break;
                }
                total += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Chunks(Vec<std::io::Result<Vec<u8>>>);

    impl Read for Chunks {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            match self.0.remove(0) {
                Ok(c) => {
                    buf[..c.len()].copy_from_slice(&c);
                    Ok(c.len())
                }
                Err(e) => Err(e),
            }
        }
    }

    #[test]
    fn copies_to_the_end_and_retries_interrupted_reads() {
        let mut from = Chunks(vec![
            Ok(b"ab".to_vec()),
            Err(ErrorKind::Interrupted.into()),
            Ok(b"c".to_vec()),
        ]);
        let mut to = Vec::new();
        assert_eq!(pump(&mut from, &mut to), 3);
        assert_eq!(to, b"abc");
    }

    #[test]
    fn stops_at_a_read_error_or_a_failed_write() {
        let mut from = Chunks(vec![
            Ok(b"ab".to_vec()),
            Err(std::io::Error::from_raw_os_error(5)),
            Ok(b"never".to_vec()),
        ]);
        let mut to = Vec::new();
        assert_eq!(pump(&mut from, &mut to), 2);
        let mut full = [0u8; 1];
        let mut from = Chunks(vec![Ok(b"xy".to_vec())]);
        assert_eq!(pump(&mut from, &mut full.as_mut_slice()), 0);
    }
}
