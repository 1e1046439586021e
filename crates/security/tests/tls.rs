//! TLS handshakes between two nodes, in memory: a rustls client and server
//! connection with the configs from `pluresdb_security::tls`, their bytes
//! pumped from one to the other (no sockets, no threads). Plus the
//! certificate checks one by one, and random bytes into the parser.

#![cfg(feature = "tls")]

use pluresdb_security::tls::{self, PeerIdVerifier, ALPN};
use pluresdb_security::{Identity, PeerId, SecurityError};
use proptest::prelude::*;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::ring::sign::any_eddsa_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use std::sync::Arc;
use std::time::Duration;

/// A fixed "now" for the verifier calls made outside a handshake (mid-2025).
fn now() -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(1_750_000_000))
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("pluresdb").unwrap()
}

fn node(seed: u8) -> Identity {
    Identity::from_seed([seed; 32])
}

fn pkcs8(key: &PrivateKeyDer<'_>) -> PrivatePkcs8KeyDer<'static> {
    match key {
        PrivateKeyDer::Pkcs8(key) => key.clone_key(),
        other => panic!("certificate() returned a non-PKCS#8 key: {other:?}"),
    }
}

/// Which side of the handshake failed, and how.
#[derive(Debug)]
enum Failure {
    Client(rustls::Error),
    Server(rustls::Error),
}

impl Failure {
    fn client(self) -> rustls::Error {
        match self {
            Failure::Client(err) => err,
            Failure::Server(err) => panic!("expected the client to fail, but the server did: {err}"),
        }
    }

    fn server(self) -> rustls::Error {
        match self {
            Failure::Server(err) => err,
            Failure::Client(err) => panic!("expected the server to fail, but the client did: {err}"),
        }
    }
}

/// Runs the handshake to its end by moving each side's output into the
/// other until neither has anything to send; returns the first failure.
fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) -> Result<(), Failure> {
    for _ in 0..16 {
        let mut bytes = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut bytes).unwrap();
        }
        let mut input = &bytes[..];
        while !input.is_empty() {
            server.read_tls(&mut input).unwrap();
            server.process_new_packets().map_err(Failure::Server)?;
        }

        let mut bytes = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut bytes).unwrap();
        }
        let mut input = &bytes[..];
        while !input.is_empty() {
            client.read_tls(&mut input).unwrap();
            client.process_new_packets().map_err(Failure::Client)?;
        }

        if !client.is_handshaking() && !server.is_handshaking() && !client.wants_write() && !server.wants_write() {
            return Ok(());
        }
    }
    panic!("handshake did not finish in 16 rounds");
}

fn connect(client: ClientConfig, server: ServerConfig) -> (ClientConnection, ServerConnection, Result<(), Failure>) {
    let mut client = ClientConnection::new(Arc::new(client), server_name()).unwrap();
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    let result = handshake(&mut client, &mut server);
    (client, server, result)
}

fn peer_of_client(client: &ClientConnection) -> PeerId {
    tls::peer_id_of_certificates(client.peer_certificates().unwrap_or(&[])).unwrap()
}

fn peer_of_server(server: &ServerConnection) -> PeerId {
    tls::peer_id_of_certificates(server.peer_certificates().unwrap_or(&[])).unwrap()
}

/// A certificate that carries `carried`'s key and names itself as its
/// issuer, but is signed by `signer`.
fn forged_certificate(carried: &Identity, signer: &Identity) -> CertificateDer<'static> {
    let (_, carried_key) = tls::certificate(carried).unwrap();
    let (_, signer_key) = tls::certificate(signer).unwrap();
    let carried_key = rcgen::KeyPair::try_from(&carried_key).unwrap();
    let signer_key = rcgen::KeyPair::try_from(&signer_key).unwrap();
    let params = rcgen::CertificateParams::new(vec![carried.peer_id().to_string()]).unwrap();
    let issuer = rcgen::Issuer::from_params(&params, &signer_key);
    params.signed_by(&carried_key, &issuer).unwrap().der().clone()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A server config like `tls::server_config`, presenting `chain` with `key`
/// exactly as given (rustls' own key/certificate consistency check is
/// bypassed, as an attacker's software would).
fn server_presenting(chain: Vec<CertificateDer<'static>>, key: &PrivatePkcs8KeyDer<'_>) -> ServerConfig {
    #[derive(Debug)]
    struct Fixed(Arc<CertifiedKey>);
    impl ResolvesServerCert for Fixed {
        fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let certified = CertifiedKey::new(chain, any_eddsa_type(key).unwrap());
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_client_cert_verifier(Arc::new(PeerIdVerifier::any()))
        .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

/// A client config like `tls::client_config(.., None)`, presenting `chain`
/// with `key` as its client certificate.
fn client_presenting(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerIdVerifier::any()))
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    config
}

#[test]
fn expecting_the_right_peer_completes_and_each_side_learns_the_other() {
    let (alice, bob) = (node(1), node(2));
    let client = tls::client_config(&alice, Some(bob.peer_id())).unwrap();
    let server = tls::server_config(&bob).unwrap();
    let (mut client, mut server, result) = connect(client, server);
    result.unwrap();

    assert_eq!(client.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(client.alpn_protocol(), Some(ALPN));
    assert_eq!(server.alpn_protocol(), Some(ALPN));
    assert_eq!(peer_of_client(&client), bob.peer_id());
    assert_eq!(peer_of_server(&server), alice.peer_id());

    // The session carries data both ways.
    std::io::Write::write_all(&mut client.writer(), b"hello bob").unwrap();
    handshake(&mut client, &mut server).unwrap();
    let mut received = [0u8; 9];
    std::io::Read::read_exact(&mut server.reader(), &mut received).unwrap();
    assert_eq!(&received, b"hello bob");
}

#[test]
fn expecting_another_peer_fails_with_a_peer_id_mismatch() {
    let (alice, bob, carol) = (node(1), node(2), node(3));
    let client = tls::client_config(&alice, Some(carol.peer_id())).unwrap();
    let (_, _, result) = connect(client, tls::server_config(&bob).unwrap());
    let err = result.unwrap_err().client();
    match tls::verification_error(&err) {
        Some(SecurityError::PeerIdMismatch { expected, found }) => {
            assert_eq!(*expected, carol.peer_id().to_string());
            assert_eq!(*found, bob.peer_id().to_string());
        }
        other => panic!("expected a peer id mismatch, got {other:?} from {err}"),
    }
    assert_eq!(tls::verification_error(&err).and_then(SecurityError::peer), Some(&*carol.peer_id().to_string()));
    let text = err.to_string();
    assert!(text.contains(&bob.peer_id().to_string()) && text.contains(&carol.peer_id().to_string()), "{text}");
}

#[test]
fn any_accepts_a_valid_node_and_reports_its_id() {
    let (alice, bob) = (node(1), node(2));
    let (client, server, result) = connect(tls::client_config(&alice, None).unwrap(), tls::server_config(&bob).unwrap());
    result.unwrap();
    assert_eq!(peer_of_client(&client), bob.peer_id());
    assert_eq!(peer_of_server(&server), alice.peer_id());
}

#[test]
fn a_server_certificate_signed_by_another_key_is_refused() {
    let (alice, bob, mallory) = (node(1), node(2), node(66));
    let forged = forged_certificate(&bob, &mallory);
    // The forged certificate still names bob's key ...
    assert_eq!(tls::peer_id_of_certificate(&forged).unwrap(), bob.peer_id());
    // ... and the server even holds bob's key for the handshake signature:
    // only the certificate's own signature is wrong.
    let (_, bob_key) = tls::certificate(&bob).unwrap();
    let server = server_presenting(vec![forged], &pkcs8(&bob_key));
    let client = tls::client_config(&alice, Some(bob.peer_id())).unwrap();
    let (_, _, result) = connect(client, server);
    let err = result.unwrap_err().client();
    match tls::verification_error(&err) {
        Some(SecurityError::Certificate { reason }) => assert!(reason.contains("self-signed"), "{reason}"),
        other => panic!("expected a refused certificate, got {other:?} from {err}"),
    }
}

#[test]
fn a_client_certificate_signed_by_another_key_is_refused() {
    let (alice, bob, mallory) = (node(1), node(2), node(66));
    let forged = forged_certificate(&alice, &mallory);
    let (_, alice_key) = tls::certificate(&alice).unwrap();
    let client = client_presenting(vec![forged], alice_key);
    let (_, _, result) = connect(client, tls::server_config(&bob).unwrap());
    let err = result.unwrap_err().server();
    assert!(matches!(tls::verification_error(&err), Some(SecurityError::Certificate { .. })), "{err}");
}

#[test]
fn a_genuine_certificate_without_its_key_fails_the_handshake_signature() {
    // Mallory replays bob's real certificate but can only sign with her key.
    let (alice, bob, mallory) = (node(1), node(2), node(66));
    let (bob_certificate, _) = tls::certificate(&bob).unwrap();
    let (_, mallory_key) = tls::certificate(&mallory).unwrap();
    let server = server_presenting(vec![bob_certificate], &pkcs8(&mallory_key));
    let client = tls::client_config(&alice, Some(bob.peer_id())).unwrap();
    let (_, _, result) = connect(client, server);
    let err = result.unwrap_err().client();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)),
        "expected a bad handshake signature, got {err}"
    );
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let bob = node(2);
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerIdVerifier::expecting(bob.peer_id())))
        .with_no_client_auth();
    client.alpn_protocols = vec![ALPN.to_vec()];
    let (_, _, result) = connect(client, tls::server_config(&bob).unwrap());
    assert!(matches!(result.unwrap_err().server(), rustls::Error::NoCertificatesPresented));
}

#[test]
fn a_non_ed25519_certificate_is_refused_with_a_typed_error() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let certificate = rcgen::CertificateParams::new(vec!["pluresdb".to_string()]).unwrap().self_signed(&key).unwrap().der().clone();
    assert!(matches!(tls::peer_id_of_certificate(&certificate), Err(SecurityError::CertificateKeyNotEd25519)));
    let err = PeerIdVerifier::any().verify_server_cert(&certificate, &[], &server_name(), &[], now()).unwrap_err();
    assert!(matches!(tls::verification_error(&err), Some(SecurityError::CertificateKeyNotEd25519)), "{err}");
    let err = PeerIdVerifier::any().verify_client_cert(&certificate, &[], now()).unwrap_err();
    assert!(matches!(tls::verification_error(&err), Some(SecurityError::CertificateKeyNotEd25519)), "{err}");
}

#[test]
fn only_a_single_certificate_is_accepted() {
    let (bob_certificate, _) = tls::certificate(&node(2)).unwrap();
    let (other, _) = tls::certificate(&node(3)).unwrap();
    let verifier = PeerIdVerifier::any();
    verifier.verify_server_cert(&bob_certificate, &[], &server_name(), &[], now()).unwrap();
    let err = verifier.verify_server_cert(&bob_certificate, std::slice::from_ref(&other), &server_name(), &[], now()).unwrap_err();
    assert!(matches!(tls::verification_error(&err), Some(SecurityError::Certificate { .. })), "{err}");
    assert!(matches!(tls::peer_id_of_certificates(&[]), Err(SecurityError::Certificate { .. })));
    assert!(tls::peer_id_of_certificates(&[bob_certificate, other]).is_err());
}

#[test]
fn an_expired_certificate_is_refused() {
    let bob = node(2);
    let (_, key) = tls::certificate(&bob).unwrap();
    let key = rcgen::KeyPair::try_from(&key).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![bob.peer_id().to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let expired = params.self_signed(&key).unwrap().der().clone();
    assert_eq!(tls::peer_id_of_certificate(&expired).unwrap(), bob.peer_id());
    let err = PeerIdVerifier::expecting(bob.peer_id()).verify_client_cert(&expired, &[], now()).unwrap_err();
    match tls::verification_error(&err) {
        Some(SecurityError::Certificate { reason }) => assert!(reason.contains("validity"), "{reason}"),
        other => panic!("expected a refused certificate, got {other:?} from {err}"),
    }
}

#[test]
fn the_node_certificate_is_valid_for_the_lifetime_of_any_node() {
    let bob = node(2);
    let (certificate, _) = tls::certificate(&bob).unwrap();
    let verifier = PeerIdVerifier::expecting(bob.peer_id());
    assert_eq!(verifier.expected(), Some(bob.peer_id()));
    assert_eq!(PeerIdVerifier::any().expected(), None);
    // From 1975-01-01 to the year 3871.
    for secs in [157_766_400u64, 1_750_000_000, 4_000_000_000, 60_000_000_000] {
        let at = UnixTime::since_unix_epoch(Duration::from_secs(secs));
        verifier.verify_server_cert(&certificate, &[], &server_name(), &[], at).unwrap();
        verifier.verify_client_cert(&certificate, &[], at).unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_certificate_parser(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let certificate = CertificateDer::from(bytes);
        let _ = tls::peer_id_of_certificate(&certificate);
        let _ = PeerIdVerifier::any().verify_client_cert(&certificate, &[], now());
    }

    /// Any change to a node certificate is either unreadable or refused by
    /// the verifier (it breaks the self-signature), and never panics.
    #[test]
    fn altered_certificates_are_refused(seed in 0u8..4, position in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let (certificate, _) = tls::certificate(&node(seed)).unwrap();
        let mut bytes = certificate.to_vec();
        let at = position.index(bytes.len());
        bytes[at] ^= flip;
        let altered = CertificateDer::from(bytes);
        let _ = tls::peer_id_of_certificate(&altered);
        prop_assert!(PeerIdVerifier::any().verify_server_cert(&altered, &[], &server_name(), &[], now()).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_identity_certificate_names_its_peer_id(seed in any::<[u8; 32]>()) {
        let identity = Identity::from_seed(seed);
        let (certificate, _) = tls::certificate(&identity).unwrap();
        prop_assert_eq!(tls::peer_id_of_certificate(&certificate).unwrap(), identity.peer_id());
        PeerIdVerifier::expecting(identity.peer_id()).verify_client_cert(&certificate, &[], now()).unwrap();
    }
}
