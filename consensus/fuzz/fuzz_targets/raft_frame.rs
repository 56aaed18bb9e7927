//! Raft frames from the network: any bytes decode to a value or an error, within the limit.
#![no_main]
use libfuzzer_sys::fuzz_target;
use nave_consensus::frame::decode;
use nave_consensus::network::{RaftReply, RaftRpc, MAX_RAFT_FRAME};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<RaftRpc>(data, MAX_RAFT_FRAME);
    let _ = decode::<RaftReply>(data, MAX_RAFT_FRAME);
});
