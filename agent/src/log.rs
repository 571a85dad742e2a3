//! Console logging for the agent. As PID 1 its stderr is `/dev/console`, the serial port.
//!
//! The agent is a small static binary, so it uses a tiny logger of its own rather than a
//! subscriber stack: one line per event, `moat-agent: LEVEL message`.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

use crate::config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

/// Sets the most verbose level that is printed.
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether `level` is printed.
pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Writes one log line; used by the macros.
pub fn emit(level: LogLevel, args: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let tag = match level {
        LogLevel::Error => "ERROR",
        LogLevel::Warn => "WARN",
        LogLevel::Info => "INFO",
        LogLevel::Debug => "DEBUG",
        LogLevel::Trace => "TRACE",
    };
    // One write per line so that lines from several threads do not interleave.
    let line = format!("moat-agent: {tag} {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Prints a line whatever the level: the ready line and other milestones a host reads.
pub fn announce(args: std::fmt::Arguments<'_>) {
    let line = format!("moat-agent: {args}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// Logs at error level.
#[macro_export]
macro_rules! error { ($($t:tt)*) => { $crate::log::emit($crate::config::LogLevel::Error, format_args!($($t)*)) } }
/// Logs at warn level.
#[macro_export]
macro_rules! warn { ($($t:tt)*) => { $crate::log::emit($crate::config::LogLevel::Warn, format_args!($($t)*)) } }
/// Logs at info level.
#[macro_export]
macro_rules! info { ($($t:tt)*) => { $crate::log::emit($crate::config::LogLevel::Info, format_args!($($t)*)) } }
/// Logs at debug level.
#[macro_export]
macro_rules! debug { ($($t:tt)*) => { $crate::log::emit($crate::config::LogLevel::Debug, format_args!($($t)*)) } }
