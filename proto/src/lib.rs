//! Wire shapes of the Knit mesh API. The only crate that knows them.
#![forbid(unsafe_code)]

/// `knit.v1`: discovery and certificate signing.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("knit.v1");
}

/// The servers of `knit.v1` for knitd: like `v1`'s, except that
/// `Discovery` sends [`wire::EncodedDiscoveryResponse`].
pub mod v1_server {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/server/knit.v1.rs"));
}

pub mod wire;
