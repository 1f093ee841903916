//! Fuzz the packet parser and everything downstream of it: bytes go to `parse`, and a
//! packet that parses goes (on a copy) to `rewrite` (full and partial checksums), the ICMP
//! error translation, the echo reply, the RST and unreachable builders and the
//! reassembler, with the properties that must hold for any input checked on the way
//! (`clusterway::dataplane::packet::fuzz::exercise`).
//!
//! How to run (nightly and cargo-fuzz: `cargo install cargo-fuzz`):
//!
//! ```text
//! cd fuzz && cargo +nightly fuzz run parse -- -max_total_time=300
//! ```
//!
//! On stable, `cd fuzz && cargo check` builds the target; the same harness also runs under
//! `cargo test --lib dataplane::packet` as proptests.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clusterway::dataplane::packet::fuzz::exercise(data);
});
