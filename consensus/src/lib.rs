//! # nave-consensus
//! (grows with its issue)
