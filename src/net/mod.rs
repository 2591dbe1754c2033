//! Client connections: accepting (one SO_REUSEPORT listener per shard), placing each on the
//! least-loaded shard, framing, limits, backpressure, and the zero-copy response writer.

pub mod balance;
pub mod connection;
pub mod listener;
pub mod rx_stamp;
pub mod sendfile;
