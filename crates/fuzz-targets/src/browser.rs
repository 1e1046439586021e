//! What the API reads from browsers' headers (`Origin`, `Host`) and from
//! `allowed_origins` / `api_hosts`: `pluresdb_server::Origin` and
//! `ApiHost`. Any web page the user visits can send these.

use crate::alloc::within_bound;
use pluresdb_server::{ApiHost, Origin};

/// An origin or host name as text: an origin that parses prints as text
/// that parses to the same origin; a host name parses the same with or
/// without the spaces around it.
pub fn check_header(input: &[u8]) {
    let Ok(text) = std::str::from_utf8(input) else { return };
    if let Ok(origin) = within_bound("Origin::parse", input, || Origin::parse(text)) {
        let printed = origin.to_string();
        assert_eq!(Origin::parse(&printed).ok().as_ref(), Some(&origin), "an origin prints as {printed:?}, which reads differently");
    }
    let host = within_bound("ApiHost::parse", input, || ApiHost::parse(text));
    assert_eq!(host.is_ok(), ApiHost::parse(text.trim()).is_ok());
}

/// Seeds for [`check_header`]: origins and hosts as browsers and configs
/// write them.
pub fn header_seeds() -> Vec<Vec<u8>> {
    [
        "http://localhost:3000",
        "https://app.example.com",
        "http://127.0.0.1:34570",
        "http://[::1]:34570/",
        "null",
        "db.example.com",
        "[::ffff:127.0.0.1]:80",
        "chrome-extension://abcdefghijklmnop",
    ]
    .iter()
    .map(|text| text.as_bytes().to_vec())
    .collect()
}
