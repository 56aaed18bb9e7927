//! # nave-hub
//! (grows with its issue)
