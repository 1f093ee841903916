//! Fuzz the gateway's DNS answer (`clusterway::fuzz::dns`): arbitrary bytes as a query over
//! UDP and TCP, from an allowed client and from one a Service does not allow, answered from
//! a small name table. What must hold for any input: no panic; every reply parses, is a
//! response with the query's ID, and over UDP fits the size the query offers.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    clusterway::fuzz::dns(data);
});
