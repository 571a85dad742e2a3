//! Counters for the vsock device: traffic, and every packet dropped or connection reset
//! because of what the guest (or a host peer) did.
//!
//! Data flow: the device and the muxer bump these lock-free counters on their hot paths; a
//! [`MetricsSnapshot`] copies them out for logs, tests and, later, the runtime's stats.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! metrics {
    ($($(#[doc = $doc:expr])* $name:ident,)*) => {
        /// The live counters, shared between the device and its backend.
        #[derive(Debug, Default)]
        pub struct VsockMetrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of the counters at one moment.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct MetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl VsockMetrics {
            /// Copies the counters out.
            pub fn snapshot(&self) -> MetricsSnapshot {
                MetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

metrics! {
    /// Packets the guest sent (well-formed chains).
    tx_packets,
    /// Payload bytes the guest sent.
    tx_bytes,
    /// Packets whose payload spanned several descriptors (Linux 6.12 above ~32 KiB).
    tx_multi_desc,
    /// Packets given to the guest.
    rx_packets,
    /// Payload bytes given to the guest.
    rx_bytes,
    /// TX chains dropped as malformed (descriptor direction, short header, memory).
    tx_malformed,
    /// TX packets whose length was bad (too long, or longer than the chain): connection reset.
    tx_bad_len,
    /// TX packets dropped for a wrong source or destination CID.
    tx_bad_cid,
    /// TX packets of a type other than stream: reset.
    tx_bad_type,
    /// TX packets with an unknown or out-of-place op, or data on a control op: reset.
    tx_bad_op,
    /// RW packets beyond the credit the guest was given: reset.
    tx_credit_overflow,
    /// TX packets for no known connection: answered with a reset.
    tx_unknown_conn,
    /// RX chains dropped as malformed (read-only descriptor, too small).
    rx_malformed,
    /// Guest connection requests refused (no listener on `<uds>_<port>`, too many connections).
    conn_refused,
    /// Host connections dropped before becoming a guest connection (bad `CONNECT` line,
    /// too many pending, guest did not answer in time).
    host_conn_dropped,
    /// Resets sent to the guest, for any reason.
    rst_sent,
    /// Connections established.
    conn_opened,
    /// Connections ended.
    conn_closed,
    /// Transport-reset events sent on the event queue.
    transport_resets,
}

impl VsockMetrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Adds `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_copies_the_counters() {
        let m = VsockMetrics::default();
        VsockMetrics::inc(&m.tx_bad_cid);
        VsockMetrics::add(&m.rx_bytes, 10);
        let s = m.snapshot();
        assert_eq!(s.tx_bad_cid, 1);
        assert_eq!(s.rx_bytes, 10);
        assert_eq!(s.tx_packets, 0);
    }
}
