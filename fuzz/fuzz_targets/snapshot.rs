//! Fuzz the snapshot-file path (`clusterway run --from-file`): arbitrary text is parsed as
//! YAML/JSON Kubernetes objects (`parse_objects`) and, when that succeeds, built into a
//! table with kube-proxy's semantics (`build_table`). What must hold for any input: no
//! panic; a bad object is an error naming it, never a crash; the table's lookups agree
//! with its list of ports.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clusterway::fuzz::snapshot(data);
});
