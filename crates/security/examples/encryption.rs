//! The seed's network encryption snippet, running: our node and "peer1"
//! (a second instance in this process) exchange public keys, then encrypt,
//! decrypt, sign and verify.
//!
//! `cargo run -p pluresdb-security --example encryption`

use pluresdb_security::{NetworkEncryption, SecurityError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), SecurityError> {
    // Create encryption manager
    let mut encryption = NetworkEncryption::new(true);
    encryption.initialize().await?;

    // Get our public key
    let our_public_key = encryption.get_our_public_key().await?;

    // The seed's "peer1" is another node; here it is a second instance, and
    // the two exchange public keys as a network engine's handshake would.
    let mut peer1 = NetworkEncryption::new(true);
    peer1.initialize().await?;
    let peer_public_key = peer1.get_our_public_key().await?;
    peer1.add_peer_key("us", &our_public_key).await?;

    // Add peer's public key
    encryption.add_peer_key("peer1", &peer_public_key).await?;

    // Encrypt message for peer
    let message = b"Hello, secure world!";
    let encrypted = encryption.encrypt_message("peer1", message).await?;
    let at_peer1 = peer1.decrypt_message("us", &encrypted).await?;
    println!("peer1 received: {}", String::from_utf8_lossy(&at_peer1));

    // Decrypt message from peer (peer1 answers with what it received)
    let from_peer1 = peer1.encrypt_message("us", &at_peer1).await?;
    let decrypted = encryption.decrypt_message("peer1", &from_peer1).await?;
    println!("decrypted from peer1: {}", String::from_utf8_lossy(&decrypted));
    println!("ciphertext: {} bytes for a {}-byte message", encrypted.len(), message.len());

    // Sign message
    let signature = encryption.sign_message(message).await?;

    // Verify signature: peer1 checks ours, and we check one of peer1's
    let is_valid = peer1.verify_message("us", message, &signature).await?;
    let peer1_signature = peer1.sign_message(message).await?;
    let peer1_valid = encryption.verify_message("peer1", message, &peer1_signature).await?;
    let forged = encryption.verify_message("peer1", message, &signature).await?;
    println!("our signature valid at peer1: {is_valid}");
    println!("peer1's signature valid: {peer1_valid}, ours passed off as peer1's: {forged}");
    if let Some(id) = encryption.peer_id() {
        println!("our peer id: {id}");
    }
    Ok(())
}
