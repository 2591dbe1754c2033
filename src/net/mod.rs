//! Client connections: accepting (one SO_REUSEPORT listener per shard), framing, limits,
//! backpressure, and the zero-copy response writer.

pub mod connection;
pub mod listener;
pub mod sendfile;
