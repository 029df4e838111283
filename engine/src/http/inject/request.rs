//! The request of `POST /api/inject/v1`, in the shape of KumoMTA's API of
//! the same name, so that injectors written for it work unchanged:
//!
//! ```json
//! {
//!   "envelope_sender": "news@example.com",
//!   "recipients": [{"email": "a@example.net", "name": "A", "substitutions": {"n": 1}}],
//!   "substitutions": {"campaign": "june"},
//!   "content": "Subject: hello\r\n\r\nHello {{ name }}"
//! }
//! ```
//!
//! `content` is a complete RFC 5322 message (a string), or an object that
//! baton builds into MIME ([`Built`]). KumoMTA's `deferred_spool`,
//! `deferred_generation`, `trace_headers`, `template_dialect`, a
//! recipient's `metadata` and content's `amp_html_body` are accepted and
//! ignored, as is any field baton does not know: a newer injector must
//! not be refused for a field it adds.
//!
//! Every problem names the field it is in: `recipients[2].email: ...`.

#![forbid(unsafe_code)]

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

/// A request, its fields checked for shape (addresses are checked later,
/// with the SMTP grammar).
#[derive(Debug)]
pub struct Request {
    pub envelope_sender: String,
    pub recipients: Vec<Recipient>,
    /// For every recipient; a recipient's own win.
    pub substitutions: Map<String, Value>,
    pub content: Content,
}

/// One recipient.
#[derive(Debug, Deserialize)]
pub struct Recipient {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub substitutions: Map<String, Value>,
}

/// What to send.
#[derive(Debug)]
pub enum Content {
    /// A complete message, header and body.
    Message(String),
    /// Parts for baton to build into a message.
    Built(Built),
}

/// `content` as an object: KumoMTA's fields for a message to build.
#[derive(Debug, Deserialize)]
pub struct Built {
    pub from: Mailbox,
    #[serde(default)]
    pub reply_to: Option<Mailbox>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub text_body: Option<String>,
    #[serde(default)]
    pub html_body: Option<String>,
    /// More header fields, by name; values are templated.
    #[serde(default)]
    pub headers: Map<String, Value>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// `{"email", "name"}`.
#[derive(Debug, Deserialize)]
pub struct Mailbox {
    pub email: String,
    #[serde(default)]
    pub name: Option<String>,
}

/// An attachment: `data` as text, or base64 when `base64` is true.
#[derive(Debug, Deserialize)]
pub struct Attachment {
    pub data: String,
    pub content_type: String,
    #[serde(default)]
    pub file_name: Option<String>,
    #[serde(default)]
    pub base64: bool,
    /// Set: an inline part (`Content-ID`), for an HTML body's `cid:` links.
    #[serde(default)]
    pub content_id: Option<String>,
}

/// A request baton cannot take, and why: `400`, naming the field.
#[derive(Debug, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl BadRequest {
    fn at(field: &str, why: impl std::fmt::Display) -> BadRequest {
        BadRequest(format!("{field}: {why}"))
    }
}

impl Request {
    /// Parses a request body.
    pub fn parse(body: &[u8]) -> Result<Request, BadRequest> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|err| BadRequest(format!("malformed JSON: {err}")))?;
        let Value::Object(mut object) = value else {
            return Err(BadRequest(
                "the body must be a JSON object (see POST /api/inject/v1)".into(),
            ));
        };
        let envelope_sender = required(&mut object, "envelope_sender")?;
        let recipient_values: Vec<Value> = required(&mut object, "recipients")?;
        if recipient_values.is_empty() {
            return Err(BadRequest::at("recipients", "must name at least one"));
        }
        let recipients = recipient_values
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                serde_json::from_value(value)
                    .map_err(|err| BadRequest::at(&format!("recipients[{i}]"), err))
            })
            .collect::<Result<Vec<Recipient>, _>>()?;
        let substitutions = optional(&mut object, "substitutions")?.unwrap_or_default();
        let content = match object.remove("content") {
            None | Some(Value::Null) => return Err(BadRequest::at("content", "missing")),
            Some(Value::String(message)) if message.trim().is_empty() => {
                return Err(BadRequest::at("content", "is empty"))
            }
            Some(Value::String(message)) => Content::Message(message),
            Some(value @ Value::Object(_)) => Content::Built(
                serde_json::from_value(value).map_err(|err| BadRequest::at("content", err))?,
            ),
            Some(_) => {
                return Err(BadRequest::at(
                    "content",
                    "must be a string (a whole RFC 5322 message) or an object (from, subject, \
                     text_body, html_body, headers, attachments)",
                ))
            }
        };
        if let Content::Built(built) = &content {
            if built.text_body.is_none() && built.html_body.is_none() {
                return Err(BadRequest::at(
                    "content",
                    "needs text_body or html_body, or both",
                ));
            }
            for (name, value) in &built.headers {
                if !value.is_string() {
                    return Err(BadRequest::at(
                        &format!("content.headers.{name}"),
                        "must be a string",
                    ));
                }
                if !header_name(name) {
                    return Err(BadRequest::at(
                        &format!("content.headers.{name}"),
                        "is not a header field name (RFC 5322 §3.6.8)",
                    ));
                }
            }
        }
        Ok(Request {
            envelope_sender,
            recipients,
            substitutions,
            content,
        })
    }

    /// Whether the content is a template: substitutions were given, or it
    /// uses the template syntax (`{{ name }}` needs no substitutions).
    pub fn templated(&self) -> bool {
        let syntax = |text: &str| text.contains("{{") || text.contains("{%");
        let content = match &self.content {
            Content::Message(message) => syntax(message),
            Content::Built(built) => {
                let texts = [&built.subject, &built.text_body, &built.html_body];
                texts.iter().any(|text| text.as_deref().is_some_and(syntax))
                    || built
                        .headers
                        .values()
                        .any(|value| value.as_str().is_some_and(syntax))
            }
        };
        content
            || !self.substitutions.is_empty()
            || self.recipients.iter().any(|r| !r.substitutions.is_empty())
    }
}

fn required<T: DeserializeOwned>(
    object: &mut Map<String, Value>,
    field: &str,
) -> Result<T, BadRequest> {
    match object.remove(field) {
        None | Some(Value::Null) => Err(BadRequest::at(field, "missing")),
        Some(value) => serde_json::from_value(value).map_err(|err| BadRequest::at(field, err)),
    }
}

fn optional<T: DeserializeOwned>(
    object: &mut Map<String, Value>,
    field: &str,
) -> Result<Option<T>, BadRequest> {
    match object.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => serde_json::from_value(value)
            .map(Some)
            .map_err(|err| BadRequest::at(field, err)),
    }
}

/// RFC 5322 §3.6.8: printable ASCII but the colon.
fn header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(body: &str) -> String {
        Request::parse(body.as_bytes()).unwrap_err().0
    }

    #[test]
    fn a_kumomta_request_parses() {
        let request = Request::parse(
            br#"{"envelope_sender": "n@example.com",
                 "recipients": [{"email": "a@example.net", "name": "A", "substitutions": {"x": 1},
                                 "metadata": {"k": "v"}}],
                 "substitutions": {"y": "z"},
                 "deferred_spool": false, "trace_headers": {"header": true},
                 "content": {"from": {"email": "n@example.com", "name": "News"},
                             "subject": "hi", "text_body": "t", "html_body": "<p>h</p>",
                             "headers": {"X-Campaign": "june"},
                             "attachments": [{"data": "aGk=", "content_type": "text/plain",
                                              "file_name": "hi.txt", "base64": true}]}}"#,
        )
        .unwrap();
        assert_eq!(request.recipients[0].name.as_deref(), Some("A"));
        assert!(request.templated());
        let Content::Built(built) = &request.content else {
            panic!("built content")
        };
        assert_eq!(built.from.name.as_deref(), Some("News"));
        assert!(built.attachments[0].base64);
    }

    #[test]
    fn a_plain_message_without_substitutions_is_no_template() {
        let request = Request::parse(
            br#"{"envelope_sender": "n@example.com", "recipients": [{"email": "a@example.net"}],
                 "content": "Subject: hi\r\n\r\nhello\r\n"}"#,
        )
        .unwrap();
        assert!(!request.templated());
    }

    #[test]
    fn problems_name_their_field() {
        assert!(bad("{").starts_with("malformed JSON"));
        assert!(bad("[]").contains("JSON object"));
        assert_eq!(
            bad(r#"{"envelope_sender": "n@example.com", "content": "x"}"#),
            "recipients: missing"
        );
        assert_eq!(
            bad(r#"{"recipients": [{"email": "a@b.c"}], "content": "x"}"#),
            "envelope_sender: missing"
        );
        assert!(bad(r#"{"envelope_sender": "n@e.com", "recipients": [{"email": "a@b.c"}, {}], "content": "x"}"#)
            .starts_with("recipients[1]: missing field `email`"));
        assert!(bad(
            r#"{"envelope_sender": "n@e.com", "recipients": [{"email": "a@b.c"}], "content": 7}"#
        )
        .starts_with("content: must be"));
        assert!(bad(r#"{"envelope_sender": "n@e.com", "recipients": [{"email": "a@b.c"}], "content": {"subject": "s", "text_body": "t"}}"#)
            .starts_with("content: missing field `from`"));
        assert!(
            bad(r#"{"envelope_sender": "n@e.com", "recipients": [], "content": "x"}"#)
                .starts_with("recipients: must name")
        );
        assert!(bad(r#"{"envelope_sender": "n@e.com", "recipients": [{"email": "a@b.c"}], "content": {"from": {"email": "n@e.com"}, "text_body": "t", "headers": {"Bad Name": "v"}}}"#)
            .starts_with("content.headers.Bad Name"));
    }
}
