//! `tether::fuzzing::cloud_protobuf`: see its documentation and docs/fuzzing.md.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tether::fuzzing::cloud_protobuf(data));
