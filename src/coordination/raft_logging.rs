//! raft-rs logs through `slog`; this drain forwards its records to `tracing` so the broker has
//! one log stream. Raft's chatter (every election step) goes to debug, its warnings stay warnings.

use std::fmt::Write as _;

/// A `slog::Drain` that writes each record as one `tracing` event under target `raft`.
pub struct TracingDrain;

struct Collect(String);

impl slog::Serializer for Collect {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        use slog::KV as _;
        let mut fields = Collect(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let message = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}{}", fields.0)
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}{}", fields.0),
            slog::Level::Info => tracing::debug!(target: "raft", "{message}{}", fields.0),
            _ => tracing::trace!(target: "raft", "{message}{}", fields.0),
        }
        Ok(())
    }
}
