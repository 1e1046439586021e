//! TLS 1.3 for the QUIC engine: a self-signed certificate that carries the
//! node's own Ed25519 key, and rustls configurations in which each side
//! checks that the other's certificate key is the peer id it expects
//! (DESIGN.md, "Identity and trust"). Behind the `tls` cargo feature, since
//! rustls, ring and rcgen have no place in the browser build.
//!
//! There is no certificate authority: a certificate proves nothing by
//! itself. What authenticates a peer is the TLS 1.3 handshake signature
//! (CertificateVerify), made with the key in its certificate, and that key
//! *is* the peer id. So a dialer that expects a peer id learns, once the
//! handshake completes, that it talks to the holder of that key.
//!
//! ```
//! use pluresdb_security::tls::{self, PeerIdVerifier};
//! use pluresdb_security::{Identity, SecurityError};
//!
//! let server = Identity::from_seed([1; 32]);
//! let (certificate, _key) = tls::certificate(&server)?;
//! // Anyone who receives the certificate reads the peer id out of it.
//! assert_eq!(tls::peer_id_of_certificate(&certificate)?, server.peer_id());
//!
//! // The listener accepts any valid node key (who may sync is decided later,
//! // by the network secret and access policy) and requires a client
//! // certificate; the dialer accepts only the node it meant to reach.
//! let server_config = tls::server_config(&server)?;
//! let client_config = tls::client_config(&Identity::from_seed([2; 32]), Some(server.peer_id()))?;
//! assert_eq!(client_config.alpn_protocols, [tls::ALPN.to_vec()]);
//! # let _ = (server_config, PeerIdVerifier::any());
//! # Ok::<(), SecurityError>(())
//! ```
//!
//! After a handshake, each side reads the other's peer id with
//! [`peer_id_of_certificates`] from what rustls (`peer_certificates()`) or
//! quinn (`Connection::peer_identity()`, a `Vec<CertificateDer>`) reports.
//! That list is exactly the certificate the verifier accepted and whose key
//! signed the handshake, so the id read from it is authenticated. The
//! verifier itself keeps no per-connection state: a config (and so its
//! verifier) is shared by every connection made with it, and a slot in it
//! for "the id found" would be overwritten by concurrent handshakes.

use crate::{Identity, PeerId, SecurityError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::NoServerSessionStorage;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError, PeerIncompatible, ServerConfig, SignatureScheme,
};
use std::sync::Arc;

/// The ALPN protocol id both configs offer and require: the PluresDB wire
/// protocol, version 1.
pub const ALPN: &[u8] = b"pluresdb/1";

/// The DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410) up to the key:
/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits) }`,
/// followed by the 32 key bytes. Ed25519 keys have no parameters, so every
/// Ed25519 SPKI is exactly these 12 bytes and the key.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// PKCS#8 v1 (RFC 5208 `PrivateKeyInfo`) of an Ed25519 key up to the
/// secret seed: `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET
/// STRING { OCTET STRING (32 bytes) } }`. Version 1, without the public
/// key: ring and aws-lc-rs both read it (rcgen uses aws-lc-rs once any
/// crate turns its `aws_lc_rs` feature on, as the WebRTC engine's DTLS
/// does), while their version-2 forms differ (ring writes the public key
/// as an explicit `[1]`, aws-lc reads RFC 5958's implicit one).
const PKCS8_V1_PREFIX: [u8; 16] = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Length of the PKCS#8 v1 document: prefix and seed.
const PKCS8_V1_LEN: usize = PKCS8_V1_PREFIX.len() + 32;

/// The only signature algorithm accepted, for certificates and handshakes
/// alike: Ed25519, as ring (the provider's backend) verifies it.
static ED25519_ONLY: WebPkiSupportedAlgorithms =
    WebPkiSupportedAlgorithms { all: &[webpki::ring::ED25519], mapping: &[(SignatureScheme::ED25519, &[webpki::ring::ED25519])] };

/// This node's TLS certificate and its private key (PKCS#8), for rustls.
///
/// The certificate is self-signed with the node's Ed25519 key and carries
/// that key as its SubjectPublicKeyInfo, so [`peer_id_of_certificate`]
/// recovers the peer id from it. Its subject common name and DNS subject
/// alternative name are the peer id text (for humans and logs; verifiers
/// never look at names), and it is valid from 1975 to 4096 so that no clock
/// skew or node lifetime makes it expire. Deterministic: the same identity
/// always gives the same certificate bytes (the serial number is a hash of
/// the key and Ed25519 signatures are deterministic).
pub fn certificate(identity: &Identity) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), SecurityError> {
    let pkcs8 = pkcs8_of(identity);
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_ED25519)
        .map_err(|err| setup("reading the node key as PKCS#8", err))?;
    let name = identity.peer_id().to_string();
    let mut params = rcgen::CertificateParams::new(vec![name.clone()]).map_err(|err| setup("naming the certificate", err))?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, name);
    params.distinguished_name = subject;
    params.not_before = rcgen::date_time_ymd(1975, 1, 1);
    params.not_after = rcgen::date_time_ymd(4096, 1, 1);
    let certificate = params.self_signed(&key_pair).map_err(|err| setup("signing the certificate", err))?;
    Ok((certificate.der().clone(), PrivateKeyDer::Pkcs8(pkcs8)))
}

/// The identity's key as a PKCS#8 v1 document (see [`PKCS8_V1_PREFIX`]),
/// the private key format that rcgen (on ring or aws-lc-rs) and rustls
/// all read for Ed25519.
fn pkcs8_of(identity: &Identity) -> PrivatePkcs8KeyDer<'static> {
    let seed = identity.secret_seed();
    let mut der = Vec::with_capacity(PKCS8_V1_LEN);
    der.extend_from_slice(&PKCS8_V1_PREFIX);
    der.extend_from_slice(&seed[..]);
    PrivatePkcs8KeyDer::from(der)
}

/// The peer id named by a certificate: the peer id of its Ed25519 public
/// key. Only parses (strict DER, X.509 v3, as webpki reads certificates for
/// rustls); it does not check the certificate's signature or validity, which
/// the verifiers do during a handshake. A certificate with any other kind of
/// key gives [`SecurityError::CertificateKeyNotEd25519`].
pub fn peer_id_of_certificate(certificate: &CertificateDer<'_>) -> Result<PeerId, SecurityError> {
    let parsed = webpki::EndEntityCert::try_from(certificate).map_err(malformed)?;
    peer_id_of_spki(parsed.subject_public_key_info().as_ref())
}

fn malformed(err: webpki::Error) -> SecurityError {
    SecurityError::Certificate { reason: format!("not a well-formed X.509 v3 certificate ({err})") }
}

/// The peer id of the single certificate a peer presented, as a connection
/// reports it after the handshake (rustls' `peer_certificates()`, quinn's
/// `peer_identity()`). This is how a listener, or a dialer that used
/// [`PeerIdVerifier::any`], learns who it is talking to.
pub fn peer_id_of_certificates(certificates: &[CertificateDer<'_>]) -> Result<PeerId, SecurityError> {
    match certificates {
        [certificate] => peer_id_of_certificate(certificate),
        _ => Err(chain_length_error(certificates.len())),
    }
}

fn chain_length_error(count: usize) -> SecurityError {
    SecurityError::Certificate { reason: format!("{count} certificates presented; a node presents exactly one") }
}

fn peer_id_of_spki(spki: &[u8]) -> Result<PeerId, SecurityError> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..]).ok_or(SecurityError::CertificateKeyNotEd25519)?;
    let key: &[u8; 32] = key.try_into().map_err(|_| SecurityError::CertificateKeyNotEd25519)?;
    PeerId::from_public_key(key)
}

/// The [`SecurityError`] behind a failed handshake, when it is a peer
/// certificate refused by [`PeerIdVerifier`] (wrong peer id, not Ed25519,
/// not self-signed, ...). `None` for every other TLS failure. quinn does not
/// hand the rustls error over; its `ConnectionError` is a transport error
/// (TLS alert 46, certificate unknown) whose reason text spells this error.
pub fn verification_error(error: &rustls::Error) -> Option<&SecurityError> {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => inner.downcast_ref(),
        _ => None,
    }
}

/// Checks the certificate a peer presents in a TLS 1.3 handshake, on either
/// side: rustls' [`ServerCertVerifier`] for the dialer and
/// [`ClientCertVerifier`] (client certificates mandatory) for the listener.
///
/// A peer passes when it presents exactly one X.509 v3 certificate that
/// carries an Ed25519 key, is self-signed by that key, is within its
/// validity period, and (for [`PeerIdVerifier::expecting`]) whose key is the
/// expected peer id; and when its handshake signature verifies under that
/// key. Names (SNI, subject) are ignored: peers are named by key, not by
/// DNS. TLS 1.2 signatures are refused (the configs offer only TLS 1.3).
///
/// Refusals are [`rustls::Error::InvalidCertificate`] wrapping a
/// [`SecurityError`]; [`verification_error`] gets it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerIdVerifier {
    expected: Option<PeerId>,
}

impl PeerIdVerifier {
    /// Accepts only the node whose peer id is `peer`; any other valid node
    /// key fails the handshake with [`SecurityError::PeerIdMismatch`].
    pub fn expecting(peer: PeerId) -> Self {
        Self { expected: Some(peer) }
    }

    /// Accepts any valid node key. The caller reads which one after the
    /// handshake, with [`peer_id_of_certificates`] (see the module docs for
    /// why the verifier does not record it).
    pub fn any() -> Self {
        Self { expected: None }
    }

    /// The peer id this verifier insists on, if any.
    pub fn expected(&self) -> Option<PeerId> {
        self.expected
    }

    /// The peer id of a presented chain, if it passes every certificate
    /// check (the handshake signature is checked separately, by rustls
    /// calling `verify_tls13_signature`).
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: webpki::KeyUsage,
    ) -> Result<PeerId, SecurityError> {
        if !intermediates.is_empty() {
            return Err(chain_length_error(1 + intermediates.len()));
        }
        let parsed = webpki::EndEntityCert::try_from(end_entity).map_err(malformed)?;
        let found = peer_id_of_spki(parsed.subject_public_key_info().as_ref())?;
        if let Some(expected) = self.expected {
            if expected != found {
                return Err(SecurityError::PeerIdMismatch { expected: expected.to_string(), found: found.to_string() });
            }
        }
        // The certificate as its own trust anchor: webpki then checks that it
        // is signed by the key it carries (with Ed25519 only), names itself as
        // its issuer, is in its validity period at `now`, is not a CA
        // certificate, and allows `usage` if it restricts usages at all.
        let anchor = webpki::anchor_from_trusted_cert(end_entity).map_err(malformed)?;
        parsed
            .verify_for_usage(ED25519_ONLY.all, &[anchor], &[], now, usage, None, None)
            .map_err(|err| SecurityError::Certificate { reason: self_signature_failure(&err) })?;
        Ok(found)
    }
}

/// Says why webpki refused a certificate as its own issuer, in the terms of
/// what a node certificate must be.
fn self_signature_failure(err: &webpki::Error) -> String {
    match err {
        webpki::Error::InvalidSignatureForPublicKey | webpki::Error::UnknownIssuer => {
            format!("it is not self-signed by the Ed25519 key it carries ({err})")
        }
        webpki::Error::CertExpired { .. } | webpki::Error::CertNotValidYet { .. } => {
            format!("it is outside its validity period ({err})")
        }
        _ => format!("it is not a valid self-signed certificate ({err})"),
    }
}

/// A refused certificate as rustls reports it, with the typed error inside.
fn refuse(err: SecurityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
}

fn tls12_refused() -> rustls::Error {
    rustls::Error::PeerIncompatible(PeerIncompatible::Tls12NotOfferedOrEnabled)
}

fn verify_handshake_signature(
    message: &[u8],
    certificate: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, certificate, dss, &ED25519_ONLY)
}

impl ServerCertVerifier for PeerIdVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, webpki::KeyUsage::server_auth()).map_err(refuse)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(message, certificate, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerIdVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No CA names to hint: a node certificate is issued by itself.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, now, webpki::KeyUsage::client_auth()).map_err(refuse)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(tls12_refused())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_handshake_signature(message, certificate, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

/// The crypto provider of both configs: ring, passed explicitly, so nothing
/// depends on (or installs) a process-wide default provider.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls config for dialing: TLS 1.3 only, ALPN [`ALPN`], this node's
/// certificate as client certificate, and a [`PeerIdVerifier`] that accepts
/// only `expected` (or, with `None`, any node: read which one after the
/// handshake with [`peer_id_of_certificates`]).
///
/// Session resumption is off, so every handshake checks the peer's key and
/// id afresh; PluresDB connections are long-lived, and a full handshake
/// costs one signature on each side.
pub fn client_config(identity: &Identity, expected: Option<PeerId>) -> Result<ClientConfig, SecurityError> {
    let (certificate, key) = certificate(identity)?;
    let verifier = match expected {
        Some(peer) => PeerIdVerifier::expecting(peer),
        None => PeerIdVerifier::any(),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| setup("building the client config", err))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![certificate], key)
        .map_err(|err| setup("loading the client certificate", err))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The rustls config for listening: TLS 1.3 only, ALPN [`ALPN`], this node's
/// certificate, and client certificates required and checked by
/// [`PeerIdVerifier::any`]: any valid node key completes the handshake, and
/// the caller reads the client's peer id with [`peer_id_of_certificates`]
/// (whether that peer may sync is the access policy's decision, not TLS').
/// No session resumption, as in [`client_config`].
pub fn server_config(identity: &Identity) -> Result<ServerConfig, SecurityError> {
    let (certificate, key) = certificate(identity)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|err| setup("building the server config", err))?
        .with_client_cert_verifier(Arc::new(PeerIdVerifier::any()))
        .with_single_cert(vec![certificate], key)
        .map_err(|err| setup("loading the server certificate", err))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

fn setup(step: &'static str, err: impl std::fmt::Display) -> SecurityError {
    SecurityError::TlsSetup { step, reason: err.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkcs8_document_is_what_ring_reads() {
        let identity = Identity::from_seed([5; 32]);
        let pkcs8 = pkcs8_of(&identity);
        assert_eq!(pkcs8.secret_pkcs8_der().len(), PKCS8_V1_LEN);
        assert_eq!(pkcs8.secret_pkcs8_der().len(), 0x2e + 2);
        // ring's loader accepts it, through rustls' provider (and rcgen,
        // in `certificate`, on whichever backend it was built with).
        let signing = rustls::crypto::ring::sign::any_eddsa_type(&pkcs8).expect("ring reads the PKCS#8 it wrote");
        assert_eq!(signing.algorithm(), rustls::SignatureAlgorithm::ED25519);
    }

    #[test]
    fn certificate_key_is_the_node_key_and_bytes_are_deterministic() {
        let identity = Identity::from_seed([6; 32]);
        let (first, _) = certificate(&identity).unwrap();
        let (second, _) = certificate(&identity).unwrap();
        assert_eq!(first, second);
        let parsed = webpki::EndEntityCert::try_from(&first).unwrap();
        let spki = parsed.subject_public_key_info();
        assert_eq!(&spki.as_ref()[..12], &ED25519_SPKI_PREFIX[..]);
        assert_eq!(&spki.as_ref()[12..], identity.verifying_key().as_bytes());
        assert_eq!(parsed.valid_dns_names().collect::<Vec<_>>(), [identity.peer_id().to_string()]);
    }

    #[test]
    fn non_ed25519_or_truncated_spki_is_refused() {
        let key = [9u8; 32];
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(&key[..31]);
        assert!(matches!(peer_id_of_spki(&spki), Err(SecurityError::CertificateKeyNotEd25519)));
        spki[8] = 0x71; // 1.3.101.113: Ed448
        spki.push(0);
        assert!(matches!(peer_id_of_spki(&spki), Err(SecurityError::CertificateKeyNotEd25519)));
    }
}
