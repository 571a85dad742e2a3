//! virtio devices, built on `virtio-queue`.

pub mod vsock;
