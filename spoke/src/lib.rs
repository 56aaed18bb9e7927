//! # nave-spoke
//! (grows with its issue)
