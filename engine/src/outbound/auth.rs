//! SMTP AUTH as a client (RFC 4954): the credentials a route gives, the
//! SASL mechanism chosen from what the server offers, and the lines of
//! the exchange. PLAIN (RFC 4616) goes in one command with its initial
//! response; LOGIN (draft-murchison-sasl-login) answers two `334`
//! challenges, user then password.

use std::fmt;

/// What a route authenticates with. `Debug` never shows the password:
/// routes and connections are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    password: String,
    /// Send them over a connection without TLS too.
    pub plaintext: bool,
}

impl Credentials {
    /// The configuration checked that neither holds a NUL (PLAIN's field
    /// separator) and that neither is empty.
    pub fn new(user: impl Into<String>, password: impl Into<String>, plaintext: bool) -> Self {
        Credentials {
            user: user.into(),
            password: password.into(),
            plaintext,
        }
    }

    /// `AUTH PLAIN <base64(NUL user NUL password)>`: no authorization
    /// identity (RFC 4616 §2: act as the user authenticated).
    pub(super) fn plain_command(&self) -> Vec<u8> {
        let mut response = Vec::with_capacity(self.user.len() + self.password.len() + 2);
        response.push(0);
        response.extend_from_slice(self.user.as_bytes());
        response.push(0);
        response.extend_from_slice(self.password.as_bytes());
        let mut line = b"AUTH PLAIN ".to_vec();
        line.extend_from_slice(encode(&response).as_bytes());
        line.extend_from_slice(b"\r\n");
        line
    }

    /// The answer to LOGIN's first challenge.
    pub(super) fn login_user(&self) -> Vec<u8> {
        response_line(self.user.as_bytes())
    }

    /// The answer to LOGIN's second challenge.
    pub(super) fn login_password(&self) -> Vec<u8> {
        response_line(self.password.as_bytes())
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("plaintext", &self.plaintext)
            .finish()
    }
}

/// The SASL mechanisms the client speaks, in order of preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
}

/// Where an AUTH exchange stands: which reply is awaited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AuthStep {
    /// `AUTH PLAIN` with its response sent: `235` or a refusal.
    Plain,
    /// `AUTH LOGIN` sent: `334` asks for the user.
    LoginUser,
    /// The user sent: `334` asks for the password.
    LoginPassword,
    /// Everything sent: `235` or a refusal.
    LoginDone,
}

/// One base64 line, CRLF ended: a response to a `334` challenge.
fn response_line(bytes: &[u8]) -> Vec<u8> {
    let mut line = encode(bytes).into_bytes();
    line.extend_from_slice(b"\r\n");
    line
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Base64 with padding (RFC 4648 §4), as RFC 4954 §4 wants: a few dozen
/// bytes per connection, not worth a dependency.
pub(super) fn encode(input: &[u8]) -> String {
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
