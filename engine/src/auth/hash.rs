//! PLACEHOLDER until the users-file branch lands: plain-text "plain:" only.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    hash.strip_prefix("plain:")
        .is_some_and(|p| p.as_bytes() == password)
}
pub fn dummy_verify(_password: &[u8]) {}
