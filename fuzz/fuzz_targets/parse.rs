//! Fuzz the packet parser and everything downstream of it: bytes go to `parse`, and a
//! packet that parses goes (on a copy) to `rewrite` (full and partial checksums), the ICMP
//! error translation, the echo reply, the RST and unreachable builders and the
//! reassembler, with the properties that must hold for any input checked on the way
//! (`clusterway::dataplane::packet::fuzz::exercise`).
//!
//! How to run, on the stable toolchain: `bash scripts/fuzz.sh` (all targets, 60 s each) or
//! `FUZZ_TARGETS=parse FUZZ_SECONDS=3600 bash scripts/fuzz.sh` (fuzz/README.md). The same
//! harness also runs under `cargo test --lib dataplane::packet` as proptests, and
//! `tests/fuzz_corpus.rs` replays the committed seeds and regressions.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clusterway::dataplane::packet::fuzz::exercise(data);
});
