//! The checks behind PluresDB's fuzz targets: every decoder of untrusted
//! bytes, and a bound on what it allocates ([`alloc`]): a length read from
//! the input is only a claim, so memory may follow the bytes that arrived,
//! never the counts they announce.

pub mod alloc;

pub use alloc::CountingAllocator;
