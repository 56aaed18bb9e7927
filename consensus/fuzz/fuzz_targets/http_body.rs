//! Request bodies of the HTTP API into their typed structs and validated parameters.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for route in nave_hub::api::BODY_ROUTES {
        let _ = nave_hub::api::validate_body(route, data);
    }
});
