//! NDJSON import (`POST /import`, `pluresdb import`): one
//! `{"id": ..., "value": {...}}` per line, each parsed and checked by the
//! server's `parse_import_line`.

use crate::alloc::within_bound;
use pluresdb_server::parse_import_line;
use serde_json::json;

/// An import body, line by line as the server reads it: a line that is
/// accepted, written back as a line, is accepted as the same node.
pub fn check_line(input: &[u8]) {
    let Ok(body) = std::str::from_utf8(input) else { return };
    for line in body.lines().filter(|line| !line.trim().is_empty()) {
        let Ok((id, value)) = within_bound("parse_import_line", line.as_bytes(), || parse_import_line(line)) else { continue };
        let again = json!({"id": id, "value": value}).to_string();
        assert_eq!(parse_import_line(&again), Ok((id, value)), "an accepted line written back is read differently");
    }
}

/// Seeds for [`check_line`]: what `pluresdb export` writes.
pub fn line_seeds() -> Vec<Vec<u8>> {
    [
        json!({"id": "user:1", "value": {"name": "Ada", "age": 36, "friend": {"#": "user:2"}}}),
        json!({"id": "user:2", "value": {"tags": ["a", "b"], "score": -1.5e-7, "ok": true, "none": null}}),
        json!({"id": "é:✓", "value": {}}),
    ]
    .iter()
    .map(|line| format!("{line}\n").into_bytes())
    .chain([b"{\"id\": \"a\", \"value\": {\"x\": 1}}\n\n{\"id\": \"b\", \"value\": {\"y\": [1, 2, 3]}}".to_vec()])
    .collect()
}
