//! HTTP/1.1 wire pieces both sides of the proxy read the same way: the framing fields of a
//! head (`fields`) and the chunked transfer coding (`chunked`). The client-facing server
//! (`http::h1`) and the upstream client (`upstream::h1`) each parse their own start line;
//! what decides where a message ends is decided here once (`body` over both), so the two sides cannot
//! disagree about it.
pub mod body;
pub mod chunked;
pub mod fields;
pub mod head;

/// Header fields one head or trailer section may carry, on either side (hyper allowed as
/// many).
pub const MAX_FIELDS: usize = 100;
