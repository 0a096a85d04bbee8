//! DestinationRule client TLS in-process: the upstream each mode picks,
//! configs with unusable TLS files rejected, and TLS originated to local
//! rustls servers (SIMPLE verified, wrong CA and SAN mismatch refused,
//! MUTUAL presenting a client certificate, HTTP/2 kept multiplexed).

mod origination;
mod support;
mod upstream_choice;
