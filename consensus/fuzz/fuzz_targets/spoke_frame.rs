//! Hub-spoke frames from the network (both directions), and the join handshake (the
//! request an anonymous joiner sends a hub, the reply a joiner reads).
#![no_main]
use libfuzzer_sys::fuzz_target;
use nave_consensus::frame::decode;
use nave_spoke::protocol::{HubToSpoke, JoinReply, JoinRequest, SpokeToHub, MAX_FRAME, MAX_JOIN_FRAME};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<HubToSpoke>(data, MAX_FRAME);
    let _ = decode::<SpokeToHub>(data, MAX_FRAME);
    let _ = decode::<JoinRequest>(data, MAX_JOIN_FRAME);
    let _ = decode::<JoinReply>(data, MAX_JOIN_FRAME);
});
