//! The messages `send` writes: a header section that carries the loadgen
//! id and send time, extra headers, and a body of a drawn size (or a
//! given file), already in wire form (dot-stuffed, CRLF).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context as _};
use baton::smtp::data::dot_stuff;
use baton::smtp::date::rfc5322_date;

use crate::ids::{MessageId, ID_HEADER, SENT_HEADER};
use crate::rng::{parse_weighted_items, Rng, Weighted};
use crate::units::parse_bytes;

/// Largest message `send` generates: more belongs in `--body-file`.
pub const MESSAGE_BYTES_MAX: usize = 256 << 20;
/// Characters of a generated body line, CRLF not counted (RFC 5322 §2.1.1
/// recommends at most 78).
const BODY_LINE_CHARS: usize = 76;
/// Header lines given with `--header`.
const EXTRA_HEADERS_MAX: usize = 100;
/// What a generated body line is made of (no line of it starts with `.`).
const FILLER: &[u8; BODY_LINE_CHARS] =
    b"loadgen body line: the quick brown fox jumps over the lazy dog 0123456789 ..";

/// How big each message is: `5KiB`, `1KiB-100KiB` (uniform), or
/// `1KiB:80,100KiB:20` (weighted).
#[derive(Clone, Debug)]
pub enum SizeSpec {
    Fixed(usize),
    Uniform { min: usize, max: usize },
    Weighted(Weighted<usize>),
}

impl SizeSpec {
    pub fn parse(text: &str) -> anyhow::Result<SizeSpec> {
        let checked = |bytes: u64| -> anyhow::Result<usize> {
            match usize::try_from(bytes) {
                Ok(bytes) if bytes <= MESSAGE_BYTES_MAX => Ok(bytes),
                _ => bail!("message size {bytes} is over the maximum {MESSAGE_BYTES_MAX}"),
            }
        };
        let text = text.trim();
        if text.contains(',') || text.contains(':') {
            let items: Vec<String> = text.split(',').map(str::to_string).collect();
            return Ok(SizeSpec::Weighted(parse_weighted_items(&items, |s| {
                checked(parse_bytes(s)?)
            })?));
        }
        if let Some((min, max)) = text.split_once('-') {
            let (min, max) = (checked(parse_bytes(min)?)?, checked(parse_bytes(max)?)?);
            if min > max {
                bail!("size range {text:?} runs backwards");
            }
            return Ok(SizeSpec::Uniform { min, max });
        }
        Ok(SizeSpec::Fixed(checked(parse_bytes(text)?)?))
    }

    pub fn draw(&self, rng: &mut Rng) -> usize {
        match self {
            SizeSpec::Fixed(bytes) => *bytes,
            SizeSpec::Uniform { min, max } => min + rng.below((max - min + 1) as u64) as usize,
            SizeSpec::Weighted(sizes) => *sizes.pick(rng),
        }
    }
}

/// Where bodies come from.
#[derive(Clone, Debug)]
pub enum BodySource {
    /// Filler lines up to a drawn total size (headers included).
    Generated(SizeSpec),
    /// This content, in wire form, after the headers.
    File(Vec<u8>),
}

/// Everything of a message but its id, time and recipient.
#[derive(Clone, Debug)]
pub struct MessageTemplate {
    /// `From:` and `Return-Path`-less header value.
    from: String,
    /// `Name: value` CRLF each.
    extra_headers: Vec<u8>,
    body: BodySource,
}

/// The fields that differ from message to message.
pub struct MessageFields<'a> {
    pub id: MessageId,
    pub sent_unix_micros: u64,
    /// The first recipient, for `To:`.
    pub to: &'a str,
    /// Total size to reach when generated.
    pub size: usize,
}

impl MessageTemplate {
    /// `headers` as given on the command line (`Name: value`).
    pub fn new(from: &str, headers: &[String], body: BodySource) -> anyhow::Result<Self> {
        if headers.len() > EXTRA_HEADERS_MAX {
            bail!("at most {EXTRA_HEADERS_MAX} extra headers");
        }
        let mut extra_headers = Vec::new();
        for header in headers {
            let valid_name = header.split_once(':').is_some_and(|(name, _)| {
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            });
            if !valid_name || header.contains(['\r', '\n']) {
                bail!("bad header {header:?}: write it as \"Name: value\" on one line");
            }
            extra_headers.extend_from_slice(header.as_bytes());
            extra_headers.extend_from_slice(b"\r\n");
        }
        let from = if from.is_empty() {
            "<>".to_string()
        } else {
            format!("<{from}>")
        };
        Ok(MessageTemplate {
            from,
            extra_headers,
            body,
        })
    }

    /// A body read from `path`, put into wire form once.
    pub fn body_file(path: &Path) -> anyhow::Result<BodySource> {
        let raw = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        if raw.len() > MESSAGE_BYTES_MAX {
            bail!("{} is over the maximum message size", path.display());
        }
        Ok(BodySource::File(dot_stuff(&raw)))
    }

    /// The size to announce for a message (SIZE, RFC 1870) and to generate.
    pub fn draw_size(&self, rng: &mut Rng) -> usize {
        match &self.body {
            BodySource::Generated(spec) => spec.draw(rng),
            // The header section is a few hundred bytes.
            BodySource::File(wire) => wire.len() + 512 + self.extra_headers.len(),
        }
    }

    /// Appends the message in wire form and the final `.` line.
    pub fn write(&self, out: &mut Vec<u8>, fields: &MessageFields<'_>) {
        let start = out.len();
        let id = fields.id;
        // Writing into a Vec cannot fail.
        let _ = write!(
            WriteVec(out),
            "From: {from}\r\nTo: <{to}>\r\nSubject: loadgen {id}\r\nDate: {date}\r\n\
             Message-ID: <{id}@loadgen.invalid>\r\n{ID_HEADER}: {id}\r\n{SENT_HEADER}: {sent}\r\n",
            from = self.from,
            to = fields.to,
            date = rfc5322_date(fields.sent_unix_micros / 1_000_000),
            sent = fields.sent_unix_micros,
        );
        out.extend_from_slice(&self.extra_headers);
        out.extend_from_slice(b"\r\n");
        match &self.body {
            BodySource::File(wire) => out.extend_from_slice(wire),
            BodySource::Generated(_) => {
                let written = out.len() - start;
                write_filler(out, fields.size.saturating_sub(written));
            }
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// Filler lines totalling `bytes` (2 when `bytes` is 1: a line needs its
/// CRLF). Always at least one line.
fn write_filler(out: &mut Vec<u8>, bytes: usize) {
    let mut left = bytes.max(2);
    while left > 0 {
        let mut line = left.min(BODY_LINE_CHARS + 2);
        if left - line == 1 {
            // Never leave a single byte: no line is that short.
            line -= 1;
        }
        out.extend_from_slice(&FILLER[..line - 2]);
        out.extend_from_slice(b"\r\n");
        left -= line;
    }
}

/// `fmt::Write` for a byte vector.
struct WriteVec<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for WriteVec<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::read_stamp;
    use baton::smtp::data::{BodyLimits, DataReader};

    fn fields(size: usize) -> MessageFields<'static> {
        MessageFields {
            id: MessageId { run: 9, seq: 3 },
            sent_unix_micros: 1_700_000_000_123_456,
            to: "user1@d1.example",
            size,
        }
    }

    #[test]
    fn generated_message_has_the_size_and_the_stamp() {
        let template = MessageTemplate::new(
            "s@x.example",
            &["X-Campaign: 7".into()],
            BodySource::Generated(SizeSpec::Fixed(5120)),
        )
        .unwrap();
        let sizes = [0, 1, 300, 5120, 5121, 5122, 100_000]
            .into_iter()
            .chain(1000..1200);
        for size in sizes {
            let mut out = Vec::new();
            template.write(&mut out, &fields(size));
            // The DATA reader of the engine finds exactly the end we wrote.
            let mut reader = DataReader::new(BodyLimits::UNLIMITED, Vec::new());
            assert_eq!(reader.feed(&out), out.len());
            assert!(reader.is_done());
            let body = reader.finish();
            assert_eq!(body.violation, None);
            if size > 400 {
                assert_eq!(body.wire.len(), size, "size {size}");
            }
            let stamp = read_stamp(&body.wire);
            assert_eq!(stamp.id, Some(MessageId { run: 9, seq: 3 }));
            assert_eq!(stamp.sent_unix_micros, Some(1_700_000_000_123_456));
            assert!(body.wire.windows(13).any(|w| w == b"X-Campaign: 7"));
        }
    }

    #[test]
    fn file_body_is_stuffed() {
        let template =
            MessageTemplate::new("", &[], BodySource::File(dot_stuff(b"hello\n.\nworld"))).unwrap();
        let mut out = Vec::new();
        template.write(&mut out, &fields(0));
        assert!(out.ends_with(b"\r\n\r\nhello\r\n..\r\nworld\r\n.\r\n"));
        assert!(out.starts_with(b"From: <>\r\n"));
    }

    #[test]
    fn bad_headers_and_sizes_are_refused() {
        let body = || BodySource::Generated(SizeSpec::Fixed(1));
        assert!(MessageTemplate::new("a@b", &["NoColon".into()], body()).is_err());
        assert!(MessageTemplate::new("a@b", &["A: b\r\nC: d".into()], body()).is_err());
        assert!(SizeSpec::parse("10-1").is_err());
        assert!(SizeSpec::parse("1GiB").is_err());
        let mut rng = Rng::new(1);
        let SizeSpec::Uniform { min, max } = SizeSpec::parse("1k-2k").unwrap() else {
            panic!("uniform")
        };
        assert_eq!((min, max), (1024, 2048));
        let weighted = SizeSpec::parse("1k:1,2k:3").unwrap();
        assert!((0..100).all(|_| [1024, 2048].contains(&weighted.draw(&mut rng))));
    }
}
