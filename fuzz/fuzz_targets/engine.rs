//! Fuzz the engine's per-packet decision (`Engine::handle`) on arbitrary packets against a
//! small table (a dual-stack TCP Service with endpoints, a UDP one, one without endpoints).
//! The input is split into up to 16 packets (each a 2-byte length and its bytes), handled
//! in order by one engine with the clock advancing, so that flows carry state from one
//! packet to the next (new UDP flows are inserted as the worker would). What must hold for
//! any input: no panic; every packet the verdict says to write fits its buffer and parses.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clusterway::fuzz::engine(data);
});
