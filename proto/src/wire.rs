//! A `DiscoveryResponse` in two parts: the head (version, nonce and the
//! per-proxy fields) and the services and endpoints, encoded once and
//! shared by every proxy sent the same config. Protobuf decoders accept
//! fields in any order and append repeated fields, so head ++ shared is a
//! valid encoding of the whole message.

use bytes::{Bytes, BytesMut};
use prost::Message;

use crate::v1::{DiscoveryResponse, Service, ServiceEndpoints};

/// What knitd's Discovery server sends (framed by knitd's `discovery_http`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncodedDiscoveryResponse {
    /// Every field but `services` and `endpoints` (those left empty).
    pub head: DiscoveryResponse,
    /// `services` and `endpoints`, encoded by [`encode_shared`].
    pub shared: Bytes,
}

/// Encodes `services` and `endpoints` as fields 3 and 4 of a
/// `DiscoveryResponse`.
pub fn encode_shared(services: &[Service], endpoints: &[ServiceEndpoints]) -> Bytes {
    use prost::encoding::message;
    let len = message::encoded_len_repeated(SERVICES, services)
        + message::encoded_len_repeated(ENDPOINTS, endpoints);
    let mut buf = BytesMut::with_capacity(len);
    for service in services {
        message::encode(SERVICES, service, &mut buf);
    }
    for set in endpoints {
        message::encode(ENDPOINTS, set, &mut buf);
    }
    buf.freeze()
}

/// Field numbers of `DiscoveryResponse.services` and `.endpoints`.
const SERVICES: u32 = 3;
const ENDPOINTS: u32 = 4;

impl EncodedDiscoveryResponse {
    /// Length of the whole encoded message (head and shared part).
    pub fn encoded_len(&self) -> usize {
        self.head.encoded_len() + self.shared.len()
    }

    /// The whole message as one buffer: head, then shared part.
    pub fn encode_to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&self.head.encode_to_vec());
        out.extend_from_slice(&self.shared);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Endpoint, InboundPolicy};

    #[test]
    fn head_and_shared_decode_as_one_response() {
        let services = vec![Service {
            name: "web".to_string(),
            namespace: "shop".to_string(),
            ..Service::default()
        }];
        let endpoints = vec![ServiceEndpoints {
            service_name: "web".to_string(),
            service_namespace: "shop".to_string(),
            endpoints: vec![Endpoint {
                address: "198.18.0.7".to_string(),
                ..Endpoint::default()
            }],
        }];
        let head = DiscoveryResponse {
            version_info: "v1".to_string(),
            nonce: "n1".to_string(),
            inbound: Some(InboundPolicy {
                default_mode: 3,
                ..InboundPolicy::default()
            }),
            ..DiscoveryResponse::default()
        };
        let whole = DiscoveryResponse {
            services: services.clone(),
            endpoints: endpoints.clone(),
            ..head.clone()
        };
        let split = EncodedDiscoveryResponse {
            head,
            shared: encode_shared(&services, &endpoints),
        };
        let bytes = split.encode_to_vec();
        assert_eq!(bytes.len(), split.encoded_len());
        assert_eq!(bytes.len(), whole.encoded_len());
        assert_eq!(DiscoveryResponse::decode(bytes.as_slice()).unwrap(), whole);
    }
}
