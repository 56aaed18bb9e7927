//! # nave-bench
//! (grows with its issue)
