//! [`NetworkEncryption`]: end-to-end encryption and signatures between
//! peers, with the seed's API.
//!
//! # Key agreement
//!
//! Each node publishes a 65-byte *key bundle* ([`NetworkEncryption::get_our_public_key`]):
//!
//! | bytes | content |
//! |---|---|
//! | 1 | bundle version, 1 |
//! | 32 | Ed25519 public key (the peer id's key) |
//! | 32 | X25519 session public key, fresh at every `initialize` |
//!
//! The key for messages from S to R is
//! `HKDF-SHA256(ikm = X25519(static_S, static_R) || X25519(session_S, session_R),
//! info = LABEL || bundle_S || bundle_R)`, where `static` is the X25519 form
//! of the node's Ed25519 key (one key to keep on disk, and the peer id alone
//! names the peer's static key). So it is static-static *plus*
//! session-session:
//! - the static-static half authenticates: only the holders of the two
//!   identity keys can compute it, so a bundle with a substituted session key
//!   yields keys nobody else has;
//! - the session half makes the keys fresh per pair of sessions: when either
//!   node restarts its counters restart too, but under new keys, so an
//!   AES-GCM nonce is never reused, ciphertexts of an earlier session do not
//!   authenticate in a new one (no replay across restarts), and traffic stays
//!   secret after the session keys are dropped even if the identity key
//!   later leaks (forward secrecy per session).
//!
//! The two directions have different keys (the info lists the sender's
//! bundle first), so a message cannot be reflected back to its sender.
//!
//! # Ciphertext
//!
//! `version (1) || epoch (u32 BE) || counter (u64 BE) || AES-256-GCM(plaintext) || tag (16)`,
//! the 13-byte header as associated data and `epoch || counter` as the
//! 96-bit nonce. The counter counts every message sent to the peer in the
//! session and never repeats; the receiver keeps a [`REPLAY_WINDOW`]-message
//! sliding bitmap, so replays are refused and reordering within the window
//! is accepted. After [`DEFAULT_REKEY_INTERVAL`] messages the sender moves to
//! the next epoch's key, `HKDF-SHA256(prk = key, info = REKEY_LABEL || epoch)`;
//! the receiver follows the epoch named in the header (and keeps the previous
//! epoch's key for stragglers), so old keys are erased as traffic flows.

pub use crate::replay::REPLAY_WINDOW;

use crate::error::{random_bytes, SecurityError};
use crate::identity::{Identity, PeerId};
use crate::replay::{Refusal, ReplayWindow};
use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hkdf::Hkdf;
use sha2::Sha256;
use std::collections::HashMap;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroizing;

/// Length of the key bundle [`NetworkEncryption::get_our_public_key`] returns.
pub const PUBLIC_KEY_BUNDLE_LEN: usize = 65;
/// Length of a ciphertext's header.
pub const HEADER_LEN: usize = 13;
/// Length of the AES-GCM tag after the encrypted bytes.
pub const TAG_LEN: usize = 16;
/// Messages sent under one key before the sender moves to the next epoch's
/// key. 2^20 keeps each key's use far below AES-GCM's limits while making a
/// rekey (one HKDF) negligible per message.
pub const DEFAULT_REKEY_INTERVAL: u64 = 1 << 20;
/// How many epochs ahead of the current one a receiver follows a header.
/// The sender moves one epoch per `rekey_interval` messages, so a larger
/// jump means that many messages were lost; bounding it bounds the HKDF work
/// a forged header can cause.
pub const MAX_EPOCH_SKIP: u32 = 16;

const BUNDLE_VERSION: u8 = 1;
const CIPHERTEXT_VERSION: u8 = 1;
const SESSION_LABEL: &[u8] = b"pluresdb/network-encryption/v1/session";
const REKEY_LABEL: &[u8] = b"pluresdb/network-encryption/v1/rekey";

/// A 256-bit AES key, wiped on drop.
type Key = Zeroizing<[u8; 32]>;

/// Our keys, present once initialized.
struct LocalKeys {
    identity: Identity,
    x25519_static: StaticSecret,
    session: StaticSecret,
    bundle: [u8; PUBLIC_KEY_BUNDLE_LEN],
}

/// The sending half of a session with a peer.
struct SendState {
    epoch: u32,
    key: Key,
    cipher: Aes256Gcm,
    /// Next counter to use; continues across re-added keys for the same peer
    /// name, so even a key seen before never meets a counter it already used.
    counter: u64,
    sent_in_epoch: u64,
}

/// The receiving half of a session with a peer.
struct ReceiveState {
    epoch: u32,
    key: Key,
    cipher: Aes256Gcm,
    previous: Option<Aes256Gcm>,
    window: ReplayWindow,
}

/// Everything we know about one peer.
struct PeerSession {
    bundle: [u8; PUBLIC_KEY_BUNDLE_LEN],
    peer_id: PeerId,
    send: SendState,
    receive: ReceiveState,
}

/// End-to-end encryption and signatures between this node and its peers:
/// the seed's `NetworkEncryption`. Sans-IO: it turns bytes into bytes and
/// never touches the network; its `async` methods complete immediately
/// (they are async because the seed's API is), and each has a synchronous
/// twin for callers that are not async.
///
/// With `enabled == false` (the seed's `enable_encryption: false`),
/// [`encrypt_message`](Self::encrypt_message) and
/// [`decrypt_message`](Self::decrypt_message) return the bytes unchanged,
/// for any peer, known or not: the transport's own encryption (TLS, Noise,
/// DTLS) is then all there is. Signatures work either way.
pub struct NetworkEncryption {
    enabled: bool,
    identity: Option<Identity>,
    local: Option<LocalKeys>,
    peers: HashMap<String, PeerSession>,
    rekey_interval: u64,
}

impl NetworkEncryption {
    /// A new instance; [`initialize`](Self::initialize) creates its identity
    /// and session keys. `enabled` chooses between encryption and plain
    /// pass-through.
    pub fn new(enabled: bool) -> Self {
        Self { enabled, identity: None, local: None, peers: HashMap::new(), rekey_interval: DEFAULT_REKEY_INTERVAL }
    }

    /// An enabled instance for this node's long-lived identity (the seed's
    /// `new` creates a throwaway one). Still needs
    /// [`initialize`](Self::initialize) for its session key.
    pub fn from_identity(identity: Identity) -> Self {
        Self { identity: Some(identity), ..Self::new(true) }
    }

    /// Sends this many messages under one key before moving to the next
    /// epoch (at least 1). Only the sender's setting matters: the epoch
    /// travels in each header.
    pub fn with_rekey_interval(mut self, messages: u64) -> Self {
        self.rekey_interval = messages.max(1);
        self
    }

    /// Whether messages are encrypted (`false`: passed through unchanged).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Creates the identity (unless given to [`from_identity`](Self::from_identity))
    /// and a fresh session key, from the platform's randomness. Calling it
    /// again does nothing: a new session key would break every peer session.
    pub async fn initialize(&mut self) -> Result<(), SecurityError> {
        if self.local.is_some() {
            return Ok(());
        }
        if self.identity.is_none() {
            self.identity = Some(Identity::generate()?);
        }
        let session_seed = Zeroizing::new(random_bytes::<32>()?);
        self.initialize_with_session_seed(*session_seed);
        Ok(())
    }

    /// [`initialize`](Self::initialize) with the session secret given, and the
    /// identity derived from it if none was given: deterministic, for tests
    /// and simulators. A session secret must never be used twice in
    /// production, since the counters restart with it.
    pub fn initialize_with_session_seed(&mut self, session_seed: [u8; 32]) {
        if self.local.is_some() {
            return;
        }
        let identity = match self.identity.take() {
            Some(identity) => identity,
            None => Identity::from_seed(*Zeroizing::new(derive_seed(&session_seed))),
        };
        let session = StaticSecret::from(session_seed);
        let mut bundle = [0u8; PUBLIC_KEY_BUNDLE_LEN];
        bundle[0] = BUNDLE_VERSION;
        bundle[1..33].copy_from_slice(identity.verifying_key().as_bytes());
        bundle[33..].copy_from_slice(X25519Public::from(&session).as_bytes());
        self.local = Some(LocalKeys { x25519_static: identity.x25519_secret(), identity, session, bundle });
    }

    /// Our peer id, once initialized.
    pub fn peer_id(&self) -> Option<PeerId> {
        self.local.as_ref().map(|local| local.identity.peer_id())
    }

    /// Our key bundle (see the [module docs](self)): what a peer passes to
    /// its `add_peer_key` to talk to us.
    pub async fn get_our_public_key(&self) -> Result<Vec<u8>, SecurityError> {
        self.public_key_bundle()
    }

    /// Synchronous [`get_our_public_key`](Self::get_our_public_key).
    pub fn public_key_bundle(&self) -> Result<Vec<u8>, SecurityError> {
        Ok(self.local()?.bundle.to_vec())
    }

    /// Registers `peer`'s key bundle and derives the session keys with it.
    /// When `peer` is a peer id, the bundle's key must be that peer id's.
    /// Adding the same bundle again keeps the session; a different bundle
    /// (the peer restarted) starts a new one, with a fresh replay window;
    /// so bundles must come from an authenticated handshake (an old bundle
    /// of the peer, re-added, would reopen its old session to replays).
    /// One key cannot be registered under two names.
    pub async fn add_peer_key(&mut self, peer: &str, key: &[u8]) -> Result<(), SecurityError> {
        self.add_peer(peer, key)
    }

    /// Synchronous [`add_peer_key`](Self::add_peer_key).
    pub fn add_peer(&mut self, peer: &str, key: &[u8]) -> Result<(), SecurityError> {
        let bad = |reason| SecurityError::BadKey { peer: peer.to_owned(), reason };
        let local = self.local.as_ref().ok_or(SecurityError::NotInitialized)?;
        let bundle: [u8; PUBLIC_KEY_BUNDLE_LEN] =
            key.try_into().map_err(|_| bad("expected a 65-byte key bundle (version, Ed25519 key, X25519 session key)"))?;
        if bundle[0] != BUNDLE_VERSION {
            return Err(bad("unknown key bundle version"));
        }
        let mut ed25519 = [0u8; 32];
        ed25519.copy_from_slice(&bundle[1..33]);
        let peer_id = PeerId::from_public_key(&ed25519).map_err(|_| bad("not a valid Ed25519 public key"))?;
        if let Ok(named) = peer.parse::<PeerId>() {
            if named != peer_id {
                return Err(bad("the key is not the one the peer id names"));
            }
        }
        // Two names with one key would share send keys with separate
        // counters: a nonce could repeat.
        if self.peers.iter().any(|(name, s)| s.peer_id == peer_id && name.as_str() != peer) {
            return Err(bad("this key is already registered under another peer name"));
        }
        let previous_counter = match self.peers.get(peer) {
            Some(existing) if existing.bundle == bundle => return Ok(()),
            Some(existing) => existing.send.counter,
            None => 0,
        };

        let mut session_public = [0u8; 32];
        session_public.copy_from_slice(&bundle[33..]);
        let static_dh = local.x25519_static.diffie_hellman(&peer_id.x25519_public());
        let session_dh = local.session.diffie_hellman(&X25519Public::from(session_public));
        if !static_dh.was_contributory() || !session_dh.was_contributory() {
            return Err(bad("X25519 key of small order"));
        }
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(static_dh.as_bytes());
        ikm[32..].copy_from_slice(session_dh.as_bytes());
        let send_key = session_key(&ikm, &local.bundle, &bundle);
        let receive_key = session_key(&ikm, &bundle, &local.bundle);
        let session = PeerSession {
            bundle,
            peer_id,
            send: SendState { epoch: 0, cipher: cipher(&send_key), key: send_key, counter: previous_counter, sent_in_epoch: 0 },
            receive: ReceiveState {
                epoch: 0,
                cipher: cipher(&receive_key),
                key: receive_key,
                previous: None,
                window: ReplayWindow::default(),
            },
        };
        self.peers.insert(peer.to_owned(), session);
        Ok(())
    }

    /// The peer id behind a registered peer name.
    pub fn peer_key(&self, peer: &str) -> Option<PeerId> {
        self.peers.get(peer).map(|s| s.peer_id)
    }

    /// Encrypts `bytes` for `peer` (see the [module docs](self) for the
    /// format). Passes them through unchanged when disabled.
    pub async fn encrypt_message(&mut self, peer: &str, bytes: &[u8]) -> Result<Vec<u8>, SecurityError> {
        self.encrypt(peer, bytes)
    }

    /// Synchronous [`encrypt_message`](Self::encrypt_message).
    pub fn encrypt(&mut self, peer: &str, bytes: &[u8]) -> Result<Vec<u8>, SecurityError> {
        if !self.enabled {
            return Ok(bytes.to_vec());
        }
        self.local()?;
        let rekey_interval = self.rekey_interval;
        let session = self.peers.get_mut(peer).ok_or_else(|| SecurityError::UnknownPeer(peer.to_owned()))?;
        let exhausted = || SecurityError::SessionExhausted { peer: peer.to_owned() };
        let send = &mut session.send;
        if send.sent_in_epoch >= rekey_interval {
            let epoch = send.epoch.checked_add(1).ok_or_else(exhausted)?;
            send.key = next_epoch_key(&send.key, epoch);
            send.cipher = cipher(&send.key);
            send.epoch = epoch;
            send.sent_in_epoch = 0;
        }
        let counter = send.counter;
        send.counter = counter.checked_add(1).ok_or_else(exhausted)?;
        send.sent_in_epoch += 1;

        let mut out = Vec::with_capacity(HEADER_LEN + bytes.len() + TAG_LEN);
        out.push(CIPHERTEXT_VERSION);
        out.extend_from_slice(&send.epoch.to_be_bytes());
        out.extend_from_slice(&counter.to_be_bytes());
        out.extend_from_slice(bytes);
        let (header, body) = out.split_at_mut(HEADER_LEN);
        let tag = send
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&header[1..]), header, body)
            // AES-GCM refuses only plaintexts over 64 GiB, beyond any frame.
            .map_err(|_| SecurityError::SessionExhausted { peer: peer.to_owned() })?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts and authenticates a message from `peer`. Refuses altered
    /// bytes, replays, messages older than the replay window and bytes too
    /// short to be a ciphertext, each with its own error; a refused message
    /// leaves the session as it was. Passes bytes through when disabled.
    pub async fn decrypt_message(&mut self, peer: &str, bytes: &[u8]) -> Result<Vec<u8>, SecurityError> {
        self.decrypt(peer, bytes)
    }

    /// Synchronous [`decrypt_message`](Self::decrypt_message).
    pub fn decrypt(&mut self, peer: &str, bytes: &[u8]) -> Result<Vec<u8>, SecurityError> {
        if !self.enabled {
            return Ok(bytes.to_vec());
        }
        self.local()?;
        let session = self.peers.get_mut(peer).ok_or_else(|| SecurityError::UnknownPeer(peer.to_owned()))?;
        if bytes.len() < HEADER_LEN + TAG_LEN {
            return Err(SecurityError::Truncated { peer: peer.to_owned(), len: bytes.len(), min: HEADER_LEN + TAG_LEN });
        }
        let (header, rest) = bytes.split_at(HEADER_LEN);
        let (body, tag) = rest.split_at(rest.len() - TAG_LEN);
        if header[0] != CIPHERTEXT_VERSION {
            return Err(SecurityError::UnsupportedVersion { peer: peer.to_owned(), version: header[0] });
        }
        let mut epoch_bytes = [0u8; 4];
        epoch_bytes.copy_from_slice(&header[1..5]);
        let epoch = u32::from_be_bytes(epoch_bytes);
        let mut counter_bytes = [0u8; 8];
        counter_bytes.copy_from_slice(&header[5..13]);
        let counter = u64::from_be_bytes(counter_bytes);

        let receive = &mut session.receive;
        match receive.window.check(counter) {
            Ok(()) => {}
            Err(Refusal::Replayed) => return Err(SecurityError::Replayed { peer: peer.to_owned(), counter }),
            Err(Refusal::TooOld { newest }) => return Err(SecurityError::TooOld { peer: peer.to_owned(), counter, newest }),
        }

        let mut plain = body.to_vec();
        let nonce = Nonce::from_slice(&header[1..]);
        let tag = Tag::from_slice(tag);
        let failed = || SecurityError::AuthenticationFailed { peer: peer.to_owned() };
        if epoch == receive.epoch {
            receive.cipher.decrypt_in_place_detached(nonce, header, &mut plain, tag).map_err(|_| failed())?;
        } else if epoch.checked_add(1) == Some(receive.epoch) && receive.previous.is_some() {
            let previous = receive.previous.as_ref().ok_or_else(failed)?;
            previous.decrypt_in_place_detached(nonce, header, &mut plain, tag).map_err(|_| failed())?;
        } else if epoch > receive.epoch && epoch - receive.epoch <= MAX_EPOCH_SKIP {
            // Ratchet a copy forward; commit only once the message authenticates.
            let mut key = Zeroizing::new(*receive.key);
            let mut previous_key = Zeroizing::new(*receive.key);
            for step in receive.epoch + 1..=epoch {
                previous_key = key;
                key = next_epoch_key(&previous_key, step);
            }
            let candidate = cipher(&key);
            candidate.decrypt_in_place_detached(nonce, header, &mut plain, tag).map_err(|_| failed())?;
            receive.previous = Some(cipher(&previous_key));
            receive.cipher = candidate;
            receive.key = key;
            receive.epoch = epoch;
        } else if epoch < receive.epoch {
            let newest = receive_newest(&receive.window, counter);
            return Err(SecurityError::TooOld { peer: peer.to_owned(), counter, newest });
        } else {
            return Err(SecurityError::EpochOutOfRange { peer: peer.to_owned(), epoch, current: receive.epoch });
        }
        receive.window.mark(counter);
        Ok(plain)
    }

    /// Signs `bytes` with our identity key (64-byte Ed25519 signature).
    pub async fn sign_message(&self, bytes: &[u8]) -> Result<Vec<u8>, SecurityError> {
        self.sign(bytes)
    }

    /// Synchronous [`sign_message`](Self::sign_message).
    pub fn sign(&self, bytes: &[u8]) -> Result<Vec<u8>, SecurityError> {
        Ok(self.local()?.identity.sign(bytes).to_vec())
    }

    /// Whether `signature` is `peer`'s signature of `bytes`. `peer` is a name
    /// registered with `add_peer_key`, or else a peer id (which names its
    /// key). A malformed signature is simply not valid (`Ok(false)`).
    pub async fn verify_message(&self, peer: &str, bytes: &[u8], signature: &[u8]) -> Result<bool, SecurityError> {
        self.verify(peer, bytes, signature)
    }

    /// Synchronous [`verify_message`](Self::verify_message).
    pub fn verify(&self, peer: &str, bytes: &[u8], signature: &[u8]) -> Result<bool, SecurityError> {
        let peer_id = match self.peers.get(peer) {
            Some(session) => session.peer_id,
            None => peer.parse::<PeerId>().map_err(|_| SecurityError::UnknownPeer(peer.to_owned()))?,
        };
        Ok(peer_id.verify(bytes, signature))
    }

    fn local(&self) -> Result<&LocalKeys, SecurityError> {
        self.local.as_ref().ok_or(SecurityError::NotInitialized)
    }
}

impl std::fmt::Debug for NetworkEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkEncryption")
            .field("enabled", &self.enabled)
            .field("peer_id", &self.peer_id())
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

/// The newest counter to report in a `TooOld` error for an old epoch.
fn receive_newest(window: &ReplayWindow, counter: u64) -> u64 {
    window.newest().unwrap_or(counter)
}

/// The identity seed used by [`NetworkEncryption::initialize_with_session_seed`]
/// when no identity was given: derived, so the two secrets differ.
fn derive_seed(session_seed: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    // A 32-byte output is always within HKDF-SHA256's 8,160-byte limit.
    let _ = Hkdf::<Sha256>::new(None, session_seed).expand(b"pluresdb/network-encryption/v1/identity", &mut out);
    out
}

fn session_key(ikm: &[u8; 64], sender: &[u8; PUBLIC_KEY_BUNDLE_LEN], receiver: &[u8; PUBLIC_KEY_BUNDLE_LEN]) -> Key {
    let mut key = Zeroizing::new([0u8; 32]);
    let hk = Hkdf::<Sha256>::new(None, ikm);
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand_multi_info(&[SESSION_LABEL, sender, receiver], &mut key[..]);
    key
}

fn next_epoch_key(key: &[u8; 32], epoch: u32) -> Key {
    let mut next = Zeroizing::new([0u8; 32]);
    // A 32-byte PRK and a 32-byte output are always valid for HKDF-SHA256.
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(key) {
        let _ = hk.expand_multi_info(&[REKEY_LABEL, &epoch.to_be_bytes()], &mut next[..]);
    }
    next
}

fn cipher(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}
