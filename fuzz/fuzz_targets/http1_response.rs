#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_data_plane::fuzzing::http1_response(data));
