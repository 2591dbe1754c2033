//! Deterministic simulation of the coordination layer (filled in below).
