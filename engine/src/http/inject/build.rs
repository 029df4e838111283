//! From an injection request to messages in wire form: templating per
//! recipient with minijinja (the engine KumoMTA's API uses, so its
//! templates work here), MIME built by mail-builder for object content,
//! and the SMTP wire form the spool keeps (CRLF, dot-stuffed).
//!
//! One message per recipient when the content is a template or is built
//! from an object (each gets its own `To:`); otherwise one message for
//! all recipients, in groups of at most `limits.recipients_per_message_max`,
//! as one SMTP transaction would carry them.

#![forbid(unsafe_code)]

use base64::Engine as _;
use mail_builder::headers::address::Address;
use mail_builder::headers::text::Text;
use mail_builder::MessageBuilder;
use minijinja::value::Serde;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};

use super::request::{BadRequest, Built, Content, Recipient, Request};

/// Template instructions one rendering may spend: a template that loops
/// without end is stopped, not left to hold a thread.
pub const TEMPLATE_FUEL_MAX: u64 = 1_000_000;

/// What the messages must stay within: the SMTP listener's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Longest line, CRLF included (`limits.text_line_bytes_max`).
    pub text_line_bytes_max: usize,
    /// `limits.message_bytes_max`.
    pub message_bytes_max: u64,
    /// Recipients of one message, when one message goes to many.
    pub recipients_per_message_max: usize,
}

/// One message to make: the recipients it goes to (indexes into the
/// request's), and its wire form or why it could not be made.
#[derive(Debug)]
pub struct Draft {
    pub recipients: Vec<usize>,
    pub wire: Result<Vec<u8>, String>,
}

/// The messages for the request's recipients named by `accepted`, made
/// as they are taken, so that the caller can stop when they take too much
/// memory. A template that does not compile is the request's error.
pub fn drafts<'a>(
    request: &'a Request,
    accepted: &'a [usize],
    limits: &'a Limits,
) -> Result<Box<dyn Iterator<Item = Draft> + 'a>, BadRequest> {
    let per_recipient = request.templated() || matches!(request.content, Content::Built(_));
    if !per_recipient {
        let Content::Message(message) = &request.content else {
            unreachable!("built content is sent per recipient");
        };
        let groups = accepted.chunks(limits.recipients_per_message_max.max(1));
        let drafts = groups.map(move |group| Draft {
            recipients: group.to_vec(),
            wire: wire_form(message.as_bytes(), limits),
        });
        return Ok(Box::new(drafts));
    }
    let templates = Templates::new(request)?;
    let drafts = accepted.iter().map(move |&index| {
        let recipient = &request.recipients[index];
        let wire = templates
            .message(request, recipient)
            .and_then(|message| wire_form(&message, limits));
        Draft {
            recipients: vec![index],
            wire,
        }
    });
    Ok(Box::new(drafts))
}

/// The request's templates, compiled once for all recipients.
struct Templates {
    env: Environment<'static>,
    /// Names of the templated header fields, in the request's order.
    headers: Vec<String>,
}

const MESSAGE: &str = "content";
const SUBJECT: &str = "subject";
const TEXT_BODY: &str = "text_body";
/// The `.html` ending turns on HTML escaping of substituted values, in
/// the HTML body only.
const HTML_BODY: &str = "html_body.html";

impl Templates {
    fn new(request: &Request) -> Result<Templates, BadRequest> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL_MAX));
        // `{{ typo }}` is an error, not an empty string in a customer's mail;
        // `{% if optional %}` still works.
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        let mut syntax = minijinja::syntax::SyntaxConfig::builder();
        syntax.keep_trailing_newline(true);
        if let Ok(syntax) = syntax.build() {
            env.set_syntax(syntax);
        }
        let mut add = |name: String, source: &str, field: &str| {
            env.add_template_owned(name, source.to_owned())
                .map_err(|err| BadRequest(format!("{field}: template: {err}")))
        };
        let mut headers = Vec::new();
        match &request.content {
            Content::Message(message) => add(MESSAGE.into(), message, "content")?,
            Content::Built(built) => {
                if let Some(subject) = &built.subject {
                    add(SUBJECT.into(), subject, "content.subject")?;
                }
                if let Some(text) = &built.text_body {
                    add(TEXT_BODY.into(), text, "content.text_body")?;
                }
                if let Some(html) = &built.html_body {
                    add(HTML_BODY.into(), html, "content.html_body")?;
                }
                for (name, value) in &built.headers {
                    let field = format!("content.headers.{name}");
                    add(
                        header_template(name),
                        value.as_str().unwrap_or_default(),
                        &field,
                    )?;
                    headers.push(name.clone());
                }
            }
        }
        Ok(Templates { env, headers })
    }

    /// One recipient's message, as RFC 5322 text.
    fn message(&self, request: &Request, recipient: &Recipient) -> Result<Vec<u8>, String> {
        let context = substitutions(&request.substitutions, recipient);
        let render = |name: &str| -> Result<String, String> {
            let template = self.env.get_template(name).map_err(|err| err.to_string())?;
            template
                .render(Serde(&context))
                .map_err(|err| format!("template: {err}"))
        };
        match &request.content {
            Content::Message(_) => render(MESSAGE).map(String::into_bytes),
            Content::Built(built) => {
                let rendered = Rendered {
                    subject: optional(built.subject.is_some(), || render(SUBJECT))?,
                    text_body: optional(built.text_body.is_some(), || render(TEXT_BODY))?,
                    html_body: optional(built.html_body.is_some(), || render(HTML_BODY))?,
                    headers: self
                        .headers
                        .iter()
                        .map(|name| Ok((name.clone(), render(&header_template(name))?)))
                        .collect::<Result<_, String>>()?,
                };
                build(built, rendered, recipient)
            }
        }
    }
}

fn header_template(name: &str) -> String {
    format!("header:{name}")
}

fn optional(
    present: bool,
    render: impl FnOnce() -> Result<String, String>,
) -> Result<Option<String>, String> {
    present.then(render).transpose()
}

/// A recipient's substitutions, as KumoMTA makes them: the request's, then
/// the recipient's own over them, then `email`, `name` and `to_header`.
fn substitutions(global: &Map<String, Value>, recipient: &Recipient) -> Map<String, Value> {
    let mut context = global.clone();
    context.extend(recipient.substitutions.clone());
    let name = recipient.name.clone().unwrap_or_default();
    let to_header = match &recipient.name {
        Some(name) if !name.is_empty() => {
            format!("\"{}\" <{}>", name.replace('"', "\\\""), recipient.email)
        }
        _ => format!("<{}>", recipient.email),
    };
    context.insert("email".into(), Value::String(recipient.email.clone()));
    context.insert("name".into(), Value::String(name));
    context.insert("to_header".into(), Value::String(to_header));
    context
}

/// Object content's templated parts, rendered for one recipient.
struct Rendered {
    subject: Option<String>,
    text_body: Option<String>,
    html_body: Option<String>,
    headers: Vec<(String, String)>,
}

/// The message object content describes, in MIME: text and HTML as
/// `multipart/alternative`, attachments beside them in `multipart/mixed`.
fn build(built: &Built, rendered: Rendered, recipient: &Recipient) -> Result<Vec<u8>, String> {
    let mut message =
        MessageBuilder::new().from(mailbox(&built.from.email, built.from.name.as_deref()));
    let has = |name: &str| {
        rendered
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    };
    if !has("To") {
        message = message.to(mailbox(&recipient.email, recipient.name.as_deref()));
    }
    if let Some(reply_to) = &built.reply_to {
        message = message.reply_to(mailbox(&reply_to.email, reply_to.name.as_deref()));
    }
    if let Some(subject) = rendered.subject {
        message = message.subject(subject);
    }
    for (name, value) in rendered.headers {
        message = message.header(name, Text::new(value));
    }
    if let Some(text) = rendered.text_body {
        message = message.text_body(text);
    }
    if let Some(html) = rendered.html_body {
        message = message.html_body(html);
    }
    for (i, attachment) in built.attachments.iter().enumerate() {
        let data = if attachment.base64 {
            base64::engine::general_purpose::STANDARD
                .decode(attachment.data.trim())
                .map_err(|err| format!("content.attachments[{i}].data: not base64: {err}"))?
        } else {
            attachment.data.clone().into_bytes()
        };
        let content_type = attachment.content_type.clone();
        message = match (&attachment.content_id, &attachment.file_name) {
            (Some(cid), _) => message.inline(content_type, cid.clone(), data),
            (None, name) => message.attachment(
                content_type,
                name.clone()
                    .unwrap_or_else(|| format!("attachment-{}", i + 1)),
                data,
            ),
        };
    }
    message.write_to_vec().map_err(|err| err.to_string())
}

fn mailbox(email: &str, name: Option<&str>) -> Address<'static> {
    match name {
        Some(name) if !name.is_empty() => {
            Address::new_address(Some(name.to_owned()), email.to_owned())
        }
        _ => Address::new_address(None::<String>, email.to_owned()),
    }
}

/// `message` in the form the spool keeps, as the DATA reader would leave
/// it: every line ended by CRLF, lines that start with `.` dot-stuffed
/// (RFC 5321 §4.5.2). A bare CR, an over-long line or an over-large
/// message is refused, as SMTP would refuse it.
pub fn wire_form(message: &[u8], limits: &Limits) -> Result<Vec<u8>, String> {
    let mut wire = Vec::with_capacity(message.len() + message.len() / 32 + 2);
    let body = message.strip_suffix(b"\n").unwrap_or(message);
    for (number, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            return Err(format!("line {} has a bare CR", number + 1));
        }
        if line.len() + 2 > limits.text_line_bytes_max {
            return Err(format!(
                "line {} is {} bytes, over limits.text_line_bytes_max ({})",
                number + 1,
                line.len() + 2,
                limits.text_line_bytes_max
            ));
        }
        if line.first() == Some(&b'.') {
            wire.push(b'.');
        }
        wire.extend_from_slice(line);
        wire.extend_from_slice(b"\r\n");
    }
    if wire.len() as u64 > limits.message_bytes_max {
        return Err(format!(
            "the message is {} bytes, over limits.message_bytes_max ({})",
            wire.len(),
            limits.message_bytes_max
        ));
    }
    Ok(wire)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        text_line_bytes_max: 1000,
        message_bytes_max: 1 << 20,
        recipients_per_message_max: 2,
    };

    fn request(json: &str) -> Request {
        Request::parse(json.as_bytes()).unwrap()
    }

    fn text(draft: &Draft) -> String {
        String::from_utf8(draft.wire.clone().unwrap()).unwrap()
    }

    #[test]
    fn the_wire_form_has_crlf_and_dot_stuffing() {
        let wire = wire_form(b"Subject: x\n\n.hidden\r\nend\n", &LIMITS).unwrap();
        assert_eq!(wire, b"Subject: x\r\n\r\n..hidden\r\nend\r\n");
        assert!(wire_form(b"a\rb\n", &LIMITS)
            .unwrap_err()
            .contains("bare CR"));
        let long = format!("Subject: x\n\n{}\n", "a".repeat(999));
        assert!(wire_form(long.as_bytes(), &LIMITS)
            .unwrap_err()
            .contains("text_line_bytes_max"));
    }

    #[test]
    fn a_plain_message_goes_once_per_group_of_recipients() {
        let r = request(
            r#"{"envelope_sender": "n@e.com", "content": "Subject: s\n\nhi\n",
                "recipients": [{"email": "a@x.com"}, {"email": "b@x.com"}, {"email": "c@x.com"}]}"#,
        );
        let drafts: Vec<_> = drafts(&r, &[0, 1, 2], &LIMITS).unwrap().collect();
        let groups: Vec<_> = drafts.iter().map(|d| d.recipients.clone()).collect();
        assert_eq!(groups, [vec![0, 1], vec![2]]);
        assert_eq!(text(&drafts[0]), "Subject: s\r\n\r\nhi\r\n");
    }

    #[test]
    fn a_template_is_rendered_per_recipient() {
        let r = request(
            r#"{"envelope_sender": "n@e.com", "substitutions": {"shop": "Acme", "n": 0},
                "content": "To: {{ to_header }}\nSubject: {{ shop }} {{ n }}\n\nHi {{ name }} ({{ email }})\n",
                "recipients": [{"email": "a@x.com", "name": "Ann", "substitutions": {"n": 1}},
                               {"email": "b@x.com", "substitutions": {"n": 2}}]}"#,
        );
        let drafts: Vec<_> = drafts(&r, &[0, 1], &LIMITS).unwrap().collect();
        assert_eq!(
            text(&drafts[0]),
            "To: \"Ann\" <a@x.com>\r\nSubject: Acme 1\r\n\r\nHi Ann (a@x.com)\r\n"
        );
        assert_eq!(
            text(&drafts[1]),
            "To: <b@x.com>\r\nSubject: Acme 2\r\n\r\nHi  (b@x.com)\r\n"
        );
    }

    #[test]
    fn template_errors_are_the_request_s_or_the_recipient_s() {
        let r = request(
            r#"{"envelope_sender": "n@e.com", "content": "Subject: {{ x \n\nhi\n",
                "recipients": [{"email": "a@x.com"}]}"#,
        );
        let refused = drafts(&r, &[0], &LIMITS).err().unwrap();
        assert!(refused.0.starts_with("content: template"));
        let r = request(
            r#"{"envelope_sender": "n@e.com", "content": "Subject: {{ missing }}\n\nhi\n",
                "recipients": [{"email": "a@x.com"}]}"#,
        );
        let drafts: Vec<_> = drafts(&r, &[0], &LIMITS).unwrap().collect();
        assert!(drafts[0].wire.as_ref().unwrap_err().contains("undefined"));
    }

    #[test]
    fn object_content_is_built_into_mime() {
        let r = request(
            r#"{"envelope_sender": "n@e.com",
                "content": {"from": {"email": "n@e.com", "name": "News"}, "subject": "Hello {{ name }}",
                            "text_body": "plain {{ name }}", "html_body": "<p>{{ name }}</p>",
                            "headers": {"X-Campaign": "june"},
                            "attachments": [{"data": "aGVsbG8=", "base64": true,
                                             "content_type": "text/plain", "file_name": "hi.txt"}]},
                "recipients": [{"email": "a@x.com", "name": "<Ann>"}]}"#,
        );
        let drafts: Vec<_> = drafts(&r, &[0], &LIMITS).unwrap().collect();
        let message = text(&drafts[0]);
        assert!(
            message.contains("From: \"News\" <n@e.com>\r\n"),
            "{message}"
        );
        assert!(message.contains("To: \"<Ann>\" <a@x.com>\r\n"), "{message}");
        assert!(message.contains("Subject: Hello <Ann>\r\n"), "{message}");
        assert!(message.contains("X-Campaign: june\r\n"), "{message}");
        assert!(message.contains("multipart/mixed"), "{message}");
        assert!(message.contains("multipart/alternative"), "{message}");
        assert!(message.contains("plain <Ann>"), "{message}");
        // Escaped in HTML only.
        assert!(message.contains("&lt;Ann&gt;"), "{message}");
        assert!(message.contains("filename=\"hi.txt\""), "{message}");
        // Text attachments stay text (7bit); binary ones are base64.
        assert!(message.contains("\r\n\r\nhello\r\n"), "{message}");
    }
}
