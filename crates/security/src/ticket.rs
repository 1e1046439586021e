//! [`Ticket`]: everything a new node needs to join a network, as one
//! copy-pasteable string (what `pluresdb invite` prints).
//!
//! Text form: `pluresdb1` followed by the base58btc of
//! `CBOR || first 4 bytes of SHA-256(CBOR)`, where the CBOR is the array
//! `[1 (format version), peer id bytes, [address text...], secret bytes]`.
//! The checksum catches a mistyped or truncated paste before it turns into a
//! handshake that mysteriously fails.

use crate::error::SecurityError;
use crate::identity::PeerId;
use crate::secret::NetworkSecret;
use ciborium::value::{Integer, Value};
use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;
use zeroize::Zeroizing;

/// What every ticket's text starts with (the `1` is the format version).
pub const TICKET_PREFIX: &str = "pluresdb1";
/// The longest ticket text accepted; longer input is refused before
/// decoding (base58 decoding is quadratic in the length).
pub const MAX_TICKET_TEXT: usize = 4096;
/// The most addresses in one ticket.
pub const MAX_TICKET_ADDRESSES: usize = 16;
/// The longest address in a ticket.
pub const MAX_ADDRESS_LEN: usize = 256;

const FORMAT_VERSION: u64 = 1;

/// An invitation to a network: a node to dial, where to find it, and the
/// network secret. Holding a ticket is being a member, so treat its text as
/// a password; `Debug` does not show the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The node that issued the ticket (and will accept the new one).
    pub peer_id: PeerId,
    /// Where to reach it: `host:port`, `quic://host:port`, multiaddrs...
    pub addresses: Vec<String>,
    /// The network's secret.
    pub secret: NetworkSecret,
}

impl Ticket {
    /// The ticket's text form (see the [module docs](self)). Fails only if
    /// the ticket breaks the limits a parser would enforce.
    pub fn to_text(&self) -> Result<String, SecurityError> {
        self.check_limits()?;
        let mut bytes = Zeroizing::new(self.to_cbor()?);
        let sum = Sha256::digest(&bytes[..]);
        bytes.extend_from_slice(&sum[..4]);
        Ok(format!("{TICKET_PREFIX}{}", bs58::encode(&bytes[..]).into_string()))
    }

    fn check_limits(&self) -> Result<(), SecurityError> {
        if self.addresses.len() > MAX_TICKET_ADDRESSES {
            return Err(SecurityError::InvalidTicket("too many addresses"));
        }
        if self.addresses.iter().any(|a| a.len() > MAX_ADDRESS_LEN) {
            return Err(SecurityError::InvalidTicket("address too long"));
        }
        Ok(())
    }

    fn to_cbor(&self) -> Result<Vec<u8>, SecurityError> {
        let value = Value::Array(vec![
            Value::Integer(FORMAT_VERSION.into()),
            Value::Bytes(self.peer_id.to_bytes().to_vec()),
            Value::Array(self.addresses.iter().cloned().map(Value::Text).collect()),
            Value::Bytes(self.secret.as_bytes().to_vec()),
        ]);
        let mut out = Vec::new();
        ciborium::into_writer(&value, &mut out).map_err(|_| SecurityError::InvalidTicket("does not encode"))?;
        Ok(out)
    }

    fn from_cbor(bytes: &[u8]) -> Result<Self, SecurityError> {
        let malformed = SecurityError::InvalidTicket;
        let value: Value = ciborium::from_reader(bytes).map_err(|_| malformed("not CBOR"))?;
        let Value::Array(fields) = value else { return Err(malformed("not a CBOR array")) };
        let [version, peer_id, addresses, secret]: [Value; 4] = fields.try_into().map_err(|_| malformed("expected 4 fields"))?;
        if version != Value::Integer(Integer::from(FORMAT_VERSION)) {
            return Err(malformed("unknown format version"));
        }
        let Value::Bytes(peer_id) = peer_id else { return Err(malformed("peer id is not bytes")) };
        let peer_id = PeerId::from_bytes(&peer_id).map_err(|_| malformed("invalid peer id"))?;
        let Value::Array(addresses) = addresses else { return Err(malformed("addresses are not an array")) };
        if addresses.len() > MAX_TICKET_ADDRESSES {
            return Err(malformed("too many addresses"));
        }
        let addresses = addresses
            .into_iter()
            .map(|a| match a {
                Value::Text(a) if a.len() <= MAX_ADDRESS_LEN => Ok(a),
                Value::Text(_) => Err(malformed("address too long")),
                _ => Err(malformed("address is not text")),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Value::Bytes(secret) = secret else { return Err(malformed("secret is not bytes")) };
        let secret = Zeroizing::new(secret);
        let secret: [u8; 32] = secret[..].try_into().map_err(|_| malformed("secret is not 32 bytes"))?;
        Ok(Self { peer_id, addresses, secret: NetworkSecret::from_bytes(secret) })
    }
}

impl FromStr for Ticket {
    type Err = SecurityError;

    /// Parses the text form; surrounding whitespace (from a paste) is ignored.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.len() > MAX_TICKET_TEXT {
            return Err(SecurityError::InvalidTicket("too long"));
        }
        let body = text.strip_prefix(TICKET_PREFIX).ok_or(SecurityError::InvalidTicket("does not start with pluresdb1"))?;
        let bytes = Zeroizing::new(bs58::decode(body).into_vec().map_err(|_| SecurityError::InvalidTicket("not base58btc"))?);
        if bytes.len() < 4 {
            return Err(SecurityError::InvalidTicket("too short"));
        }
        let (cbor, sum) = bytes.split_at(bytes.len() - 4);
        if Sha256::digest(cbor)[..4] != *sum {
            return Err(SecurityError::InvalidTicket("checksum mismatch (mistyped or truncated)"));
        }
        let ticket = Self::from_cbor(cbor)?;
        // One ticket, one text: refuse encodings that merely decode alike.
        if *Zeroizing::new(ticket.to_cbor()?) != cbor {
            return Err(SecurityError::InvalidTicket("not in canonical form"));
        }
        Ok(ticket)
    }
}

impl fmt::Display for Ticket {
    /// The text form. A ticket over the limits (only possible when built by
    /// hand) displays as its error instead, which no parser accepts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_text() {
            Ok(text) => f.write_str(&text),
            Err(e) => write!(f, "<{e}>"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn ticket() -> Ticket {
        Ticket {
            peer_id: Identity::from_seed([4; 32]).peer_id(),
            addresses: vec!["quic://192.0.2.1:34569".into(), "/ip4/192.0.2.1/udp/34570/quic-v1".into()],
            secret: NetworkSecret::from_bytes([8; 32]),
        }
    }

    #[test]
    fn ticket_text_round_trips() {
        let text = ticket().to_text().unwrap();
        assert!(text.starts_with("pluresdb1"), "{text}");
        assert_eq!(format!("{}", ticket()), text);
        assert_eq!(text.parse::<Ticket>().unwrap(), ticket());
        assert_eq!(format!("  {text}\n").parse::<Ticket>().unwrap(), ticket());
        assert!(!format!("{:?}", ticket()).contains("0808"));
    }

    #[test]
    fn damaged_tickets_give_typed_errors() {
        let text = ticket().to_text().unwrap();
        let cases = [
            text[..text.len() - 1].to_string(),
            text.replacen("pluresdb1", "pluresdb2", 1),
            format!("{text}0"),
            format!("{}x{}", &text[..20], &text[21..]),
            "pluresdb1".into(),
            String::new(),
        ];
        for case in cases {
            assert!(matches!(case.parse::<Ticket>(), Err(SecurityError::InvalidTicket(_))), "{case}");
        }
        let mut crowded = ticket();
        crowded.addresses = vec!["a".into(); MAX_TICKET_ADDRESSES + 1];
        assert!(crowded.to_text().is_err());
    }
}
