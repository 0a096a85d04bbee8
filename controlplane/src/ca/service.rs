//! `Certificates.Sign`: authenticate the caller, check its CSR against its
//! identity, issue, and return the chain with the trust bundle.

use std::sync::Arc;

use knit_proto::v1 as pb;
use knit_proto::v1::certificates_server::Certificates;
use tonic::{Request, Response, Status};

use super::auth::{CallerAuthenticator, CallerIdentity, bearer_token};
use super::authority::{CertificateAuthority, IssuedCert};
use super::identity::SpiffeId;
use super::pki;
use crate::error::Error;

pub struct CertificatesService<A> {
    ca: Arc<CertificateAuthority>,
    authenticator: Arc<A>,
}

impl<A> Clone for CertificatesService<A> {
    fn clone(&self) -> Self {
        CertificatesService {
            ca: Arc::clone(&self.ca),
            authenticator: Arc::clone(&self.authenticator),
        }
    }
}

impl<A: CallerAuthenticator> CertificatesService<A> {
    pub fn new(ca: Arc<CertificateAuthority>, authenticator: Arc<A>) -> CertificatesService<A> {
        CertificatesService { ca, authenticator }
    }

    async fn handle(
        &self,
        request: &Request<pb::SignRequest>,
    ) -> Result<(CallerIdentity, IssuedCert), (Option<CallerIdentity>, Error)> {
        let token = bearer_token(request.metadata()).map_err(|err| (None, err))?;
        let caller = self
            .authenticator
            .authenticate(token)
            .await
            .map_err(|err| (None, err))?;
        let identity = SpiffeId::new(
            self.ca.trust_domain(),
            &caller.namespace,
            &caller.service_account,
        );
        let body = request.get_ref();
        match self.ca.sign_csr(&body.csr_pem, body.ttl_seconds, &identity) {
            Ok(issued) => Ok((caller, issued)),
            Err(err) => Err((Some(caller), err)),
        }
    }
}

#[tonic::async_trait]
impl<A: CallerAuthenticator> Certificates for CertificatesService<A> {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown".to_owned(), |addr| addr.to_string());
        match self.handle(&request).await {
            Ok((caller, issued)) => {
                tracing::info!(
                    %peer,
                    workload = %format!("{}/{}", caller.namespace, caller.workload),
                    identity = %SpiffeId::new(self.ca.trust_domain(), &caller.namespace, &caller.service_account),
                    serial = %issued.serial,
                    not_after = %pki::rfc3339(issued.not_after_unix),
                    "issued workload certificate"
                );
                Ok(Response::new(pb::SignResponse {
                    cert_chain_pem: issued.chain_pem(),
                    trust_bundle_pem: self.ca.trust_bundle_pem(),
                }))
            }
            Err((caller, err)) => {
                // Refusals are worth a line each: they are either a
                // misconfigured proxy or someone probing the CA.
                let who = caller.map_or_else(
                    || "unauthenticated caller".to_owned(),
                    |c| format!("{}/{}", c.namespace, c.workload),
                );
                tracing::warn!(%peer, caller = %who, "certificate refused: {err}");
                Err(err.to_status())
            }
        }
    }
}
