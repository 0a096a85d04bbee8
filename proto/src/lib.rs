//! Wire shapes of the Knit mesh API. The only crate that knows them.
#![forbid(unsafe_code)]

/// `knit.v1`: discovery and certificate signing.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("knit.v1");
}
pub mod wire;
