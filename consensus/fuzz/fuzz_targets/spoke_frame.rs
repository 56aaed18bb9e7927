//! Hub-spoke frames from the network (both directions).
#![no_main]
use libfuzzer_sys::fuzz_target;
use nave_consensus::frame::decode;
use nave_spoke::protocol::{HubToSpoke, SpokeToHub, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<HubToSpoke>(data, MAX_FRAME);
    let _ = decode::<SpokeToHub>(data, MAX_FRAME);
});
