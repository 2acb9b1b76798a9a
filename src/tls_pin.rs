//! A TLS server verifier that accepts exactly one pinned server, for the daemons that present
//! self-signed certificates: LXD (its certificate itself is pinned, as `lxc remote add` does)
//! and Proxmox VE (the SHA-256 of its leaf certificate, as Proxmox's own tools pin it).
//!
//! Pinning replaces the chain and host-name checks only: the handshake signatures are still
//! verified with the crypto provider's algorithms, so the peer must hold the pinned
//! certificate's private key. There is no "accept anything" mode.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What the server's leaf certificate must be.
#[derive(Debug)]
pub enum Pin {
    /// One of these certificates, byte for byte.
    Certificates(Vec<CertificateDer<'static>>),
    /// The certificate whose DER has this SHA-256.
    Sha256([u8; 32]),
}

impl Pin {
    fn matches(&self, leaf: &CertificateDer<'_>) -> bool {
        match self {
            Pin::Certificates(certs) => certs.iter().any(|c| c.as_ref() == leaf.as_ref()),
            Pin::Sha256(want) => {
                use sha2::Digest;
                let got: [u8; 32] = sha2::Sha256::digest(leaf.as_ref()).into();
                got == *want
            }
        }
    }
}

/// Accepts the server whose leaf certificate matches the pin; any other is refused with
/// `mismatch`, a sentence naming the setting to check.
#[derive(Debug)]
pub struct PinnedServer {
    pin: Pin,
    mismatch: &'static str,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinnedServer {
    pub fn new(
        pin: Pin,
        mismatch: &'static str,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> PinnedServer {
        PinnedServer {
            pin,
            mismatch,
            provider,
        }
    }
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.pin.matches(end_entity) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(self.mismatch.into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_matches_only_its_certificate() {
        let a = CertificateDer::from(vec![1u8, 2, 3]);
        let b = CertificateDer::from(vec![1u8, 2, 4]);
        let certs = Pin::Certificates(vec![a.clone().into_owned()]);
        assert!(certs.matches(&a) && !certs.matches(&b));
        use sha2::Digest;
        let fp: [u8; 32] = sha2::Sha256::digest([1u8, 2, 3]).into();
        let sha = Pin::Sha256(fp);
        assert!(sha.matches(&a) && !sha.matches(&b));
    }
}
