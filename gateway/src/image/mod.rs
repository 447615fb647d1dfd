//! An image on its way to a client.
//!
//! - [`outcome`]: the image or the error a request ends in, and how a reply becomes one; an
//!   image's bytes are inline, a chunked transfer, or stored in the archive.
//! - [`transfer`]: receiving a chunked transfer: credit, order, size and SHA-256 checks,
//!   stalls, and the buffer budget all transfers share.

pub mod outcome;
pub mod transfer;
