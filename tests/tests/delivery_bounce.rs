//! A recipient the next hop refuses with `5xx` fails at once, and the
//! sender gets one delivery status notification (RFC 3464) per message and
//! attempt, listing every recipient that failed in it: from the null
//! reverse path, `multipart/report` with a human part, a
//! `message/delivery-status` part and the original's header section. It
//! is queued and delivered like any message, here to the sink that stands
//! for the sender's domain. A message from the null reverse path never
//! earns one (RFC 5321 §6.1, RFC 3464 §1).

use std::net::SocketAddr;
use std::path::Path;

use baton_tests::sink::Sink;
use baton_tests::{queued_id, Baton, TestConfig};

/// `[[route]]` table sending `domain` to `next_hop`.
fn route(domain: &str, next_hop: SocketAddr) -> String {
    format!("[[route]]\ndomain = \"{domain}\"\nnext_hop = \"{next_hop}\"\n")
}

/// The `[log]` table writing the delivery event log to `path`.
fn event_log(path: &Path) -> String {
    format!("[log]\nevents = \"{}\"\n", path.display())
}

/// One baton delivering `dest.test` to one sink and `sender.test` (the
/// senders' domain, where notifications go) to another, with an event log.
struct Setup {
    server: Baton,
    dest: Sink,
    senders: Sink,
    events_path: std::path::PathBuf,
    _logs: tempfile::TempDir,
}

impl Setup {
    /// `extra_routes`: more `[[route]]` tables (an exact domain wins over
    /// `*`, whatever the order).
    fn start(extra_routes: &str) -> Setup {
        let dest = Sink::start("127.0.0.2", &[]);
        let senders = Sink::start("127.0.0.3", &[]);
        let logs = tempfile::tempdir().expect("event log directory");
        let events_path = logs.path().join("events.jsonl");
        let server = Baton::start_with(TestConfig {
            deliver: true,
            extra_toml: route("dest.test", dest.addr)
                + &route("sender.test", senders.addr)
                + extra_routes
                + &event_log(&events_path),
            ..TestConfig::default()
        });
        Setup {
            server,
            dest,
            senders,
            events_path,
            _logs: logs,
        }
    }

    /// Sends one message on a new connection; its queue id.
    fn send(&self, from: &str, to: &[&str], body: &str) -> String {
        let mut smtp = self.server.connect();
        smtp.ehlo("client.test");
        queued_id(&smtp.send_message(from, to, body))
    }

    /// Waits until `address` of message `id` has `status`.
    fn wait_status(&mut self, id: &str, address: &str, status: &str) {
        self.server
            .wait_for(&format!("{address} of {id} {status}"), |s| {
                recipient_status(s, id, address) == status
            });
    }

    /// Waits until nothing is left to deliver.
    fn wait_queue_empty(&mut self) {
        self.server
            .wait_for("an empty queue", |s| s.queued_recipients() == 0);
    }

    /// Every line of the event log so far, parsed.
    fn events(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.events_path).unwrap_or_default();
        text.lines()
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|err| panic!("event {line:?}: {err}"))
            })
            .collect()
    }

    /// The events of `kind`, once at least `count` of them are written.
    fn wait_events(&mut self, kind: &str, count: usize) -> Vec<serde_json::Value> {
        let path = self.events_path.clone();
        let of_kind = move || -> Vec<serde_json::Value> {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            text.lines()
                .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
                .filter(|e| e["event"] == kind)
                .collect()
        };
        self.server
            .wait_until(&format!("{count} {kind} events"), || {
                of_kind().len() >= count
            });
        of_kind()
    }
}

/// `GET /queue/<id>`: the message with the state of each recipient.
fn message(server: &Baton, id: &str) -> serde_json::Value {
    let (status, body) = server.admin_request("GET", &format!("/queue/{id}"));
    assert_eq!(status, 200, "GET /queue/{id}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|err| panic!("GET /queue/{id}: {err}: {body}"))
}

fn recipient_status(server: &Baton, id: &str, address: &str) -> String {
    let message = message(server, id);
    message["recipients"]
        .as_array()
        .expect("recipients")
        .iter()
        .find(|r| r["address"] == address)
        .unwrap_or_else(|| panic!("{address} is not a recipient of {id}: {message}"))["status"]
        .as_str()
        .expect("status")
        .to_string()
}

/// One counter from `/metrics`.
fn metric(server: &Baton, name: &str) -> u64 {
    let (status, body) = server.admin_request("GET", "/metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample of {name} in\n{body}"))
}

/// A header section, unfolded (RFC 5322 §2.2.3), as (name, value) pairs.
fn header_fields(section: &str) -> Vec<(String, String)> {
    section
        .replace("\r\n ", " ")
        .replace("\r\n\t", " ")
        .split("\r\n")
        .filter(|line| !line.is_empty())
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("not a header field: {line:?}"));
            (name.to_string(), value.trim().to_string())
        })
        .collect()
}

/// The value of `name` among `fields`.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {fields:?}"))
}

/// One body part of a MIME multipart.
struct Part {
    headers: Vec<(String, String)>,
    content: String,
}

/// A delivery status notification as a user's mail reader sees it.
struct Notification {
    headers: Vec<(String, String)>,
    parts: Vec<Part>,
}

impl Notification {
    /// Splits a notification at its boundary (RFC 2046 §5.1.1).
    fn parse(text: &str) -> Notification {
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no header section:\n{text}"));
        let headers = header_fields(head);
        let content_type = field(&headers, "Content-Type").to_string();
        let boundary = content_type
            .split(';')
            .find_map(|param| param.trim().strip_prefix("boundary="))
            .unwrap_or_else(|| panic!("no boundary in {content_type:?}"))
            .trim_matches('"')
            .to_string();
        let delimiter = format!("\r\n--{boundary}");
        let close = format!("\r\n--{boundary}--\r\n");
        // The preamble's line break counts as the first delimiter's.
        let body = format!("\r\n{body}");
        let end = body
            .find(&close)
            .unwrap_or_else(|| panic!("no closing delimiter {close:?}:\n{text}"));
        let parts = body[..end]
            .split(&delimiter)
            .skip(1)
            .map(|part| {
                let part = part.strip_prefix("\r\n").expect("delimiter line ends");
                let (head, content) = part.split_once("\r\n\r\n").unwrap_or((part, ""));
                Part {
                    headers: header_fields(head),
                    content: content.to_string(),
                }
            })
            .collect();
        Notification { headers, parts }
    }

    /// The part whose Content-Type starts with `content_type`.
    fn part(&self, content_type: &str) -> &Part {
        self.parts
            .iter()
            .find(|p| field(&p.headers, "Content-Type").starts_with(content_type))
            .unwrap_or_else(|| panic!("no {content_type} part"))
    }

    /// The delivery-status fields: the per-message group, then one group
    /// per recipient (RFC 3464 §2.1).
    fn status_groups(&self) -> Vec<Vec<(String, String)>> {
        self.part("message/delivery-status")
            .content
            .split("\r\n\r\n")
            .filter(|group| !group.trim().is_empty())
            .map(header_fields)
            .collect()
    }
}

/// Checks the parts every notification has, and returns the recipient
/// groups of its delivery-status part.
#[track_caller]
fn check_notification(text: &str, sender: &str) -> Vec<Vec<(String, String)>> {
    let notice = Notification::parse(text);
    assert_eq!(
        field(&notice.headers, "From"),
        "Mail Delivery System <MAILER-DAEMON@baton.test>",
        "{text}"
    );
    assert_eq!(
        field(&notice.headers, "To"),
        format!("<{sender}>"),
        "{text}"
    );
    let content_type = field(&notice.headers, "Content-Type");
    assert!(
        content_type.starts_with("multipart/report;")
            && content_type.contains("report-type=delivery-status"),
        "{content_type}"
    );
    let types: Vec<&str> = notice
        .parts
        .iter()
        .map(|p| field(&p.headers, "Content-Type"))
        .collect();
    assert_eq!(types.len(), 3, "{types:?}");
    assert!(types[0].starts_with("text/plain"), "{types:?}");
    assert_eq!(types[1], "message/delivery-status", "{types:?}");
    assert_eq!(types[2], "text/rfc822-headers", "{types:?}");
    let mut groups = notice.status_groups();
    assert!(groups.len() >= 2, "no recipient in {groups:?}");
    let per_message = groups.remove(0);
    assert_eq!(field(&per_message, "Reporting-MTA"), "dns; baton.test");
    groups
}

/// The original's headers in a notification, and its human part.
fn attached_and_human(text: &str) -> (String, String) {
    let notice = Notification::parse(text);
    (
        notice.part("text/rfc822-headers").content.clone(),
        notice.part("text/plain").content.clone(),
    )
}

#[test]
fn a_recipient_refused_with_550_bounces_to_the_sender_with_its_reply_and_the_original_headers() {
    let mut setup = Setup::start("");
    let body = "From: Alice <alice@sender.test>\r\n\
                Subject: Quarterly numbers\r\n\
                Message-ID: <q3@sender.test>\r\n\
                \r\n\
                The body text stays with the sender.\r\n";
    let id = setup.send(
        "alice@sender.test",
        &["bounce-bob@dest.test", "ok@dest.test"],
        body,
    );
    setup.wait_status(&id, "ok@dest.test", "delivered");
    setup.wait_status(&id, "bounce-bob@dest.test", "failed");
    let senders = &setup.senders;
    setup
        .server
        .wait_until("a notification at the sender's domain", || {
            senders.count() >= 1
        });
    setup.wait_queue_empty();

    let delivered = setup.dest.messages();
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert!(delivered[0].contains("Subject: Quarterly numbers\r\n"));
    let notices = setup.senders.messages();
    assert_eq!(notices.len(), 1, "one notification: {notices:?}");
    let text = &notices[0];
    let groups = check_notification(text, "alice@sender.test");
    assert_eq!(groups.len(), 1, "only the failed recipient: {groups:?}");
    let failed = &groups[0];
    assert_eq!(
        field(failed, "Final-Recipient"),
        "rfc822; bounce-bob@dest.test"
    );
    assert_eq!(field(failed, "Action"), "failed");
    // The sink answers `550 5.1.1 scripted: no such user`.
    assert_eq!(field(failed, "Status"), "5.1.1");
    assert_eq!(field(failed, "Remote-MTA"), "dns; 127.0.0.2", "{failed:?}");
    assert_eq!(
        field(failed, "Diagnostic-Code"),
        "smtp; 550 5.1.1 scripted: no such user"
    );
    let (attached, human) = attached_and_human(text);
    assert!(
        attached.contains("Subject: Quarterly numbers\r\n"),
        "{attached}"
    );
    assert!(
        attached.contains("Message-ID: <q3@sender.test>\r\n"),
        "{attached}"
    );
    assert!(human.contains("<bounce-bob@dest.test>"), "{human}");
    // Headers only, and not a word about the recipient that got it.
    assert!(!text.contains("The body text stays"), "{text}");
    assert!(!text.contains("ok@dest.test"), "{text}");

    // The notification itself went out from the null reverse path.
    let bounces = setup.wait_events("bounce", 1);
    assert_eq!(bounces.len(), 1, "{bounces:?}");
    assert_eq!(bounces[0]["queue_id"], id.as_str(), "{:?}", bounces[0]);
    let bounce_id = bounces[0]["bounce_queue_id"]
        .as_str()
        .expect("bounce_queue_id");
    let notification = message(&setup.server, bounce_id);
    assert_eq!(notification["sender"], "", "{notification}");
    assert_eq!(
        Baton::shown_recipients(&notification),
        ["alice@sender.test"]
    );
    assert_eq!(notification["recipients"][0]["status"], "delivered");
    assert_eq!(metric(&setup.server, "baton_bounces_generated_total"), 1);
    assert_eq!(metric(&setup.server, "baton_recipients_failed_total"), 1);
}

#[test]
fn a_message_from_the_null_reverse_path_fails_without_a_notification() {
    // Whatever the notification's recipient, it would land at one of the
    // sinks: the senders' domain, `dest.test`, or this catch-all.
    let elsewhere = Sink::start("127.0.0.4", &[]);
    let mut setup = Setup::start(&route("*", elsewhere.addr));
    let body = "Subject: I am a bounce\r\n\r\nreport\r\n";
    let silent = setup.send("", &["bounce-x@dest.test"], body);
    setup.wait_status(&silent, "bounce-x@dest.test", "failed");
    // The same failure from a real sender does bounce: this one is the
    // control that shows notifications are generated and routed here.
    let body = "Subject: control\r\n\r\nreport\r\n";
    let control = setup.send("alice@sender.test", &["bounce-y@dest.test"], body);
    setup.wait_status(&control, "bounce-y@dest.test", "failed");
    let senders = &setup.senders;
    setup
        .server
        .wait_until("the control's notification", || senders.count() >= 1);
    setup.wait_queue_empty();

    let notices = setup.senders.messages();
    assert_eq!(notices.len(), 1, "{notices:?}");
    let groups = check_notification(&notices[0], "alice@sender.test");
    assert_eq!(groups.len(), 1, "{groups:?}");
    assert_eq!(
        field(&groups[0], "Final-Recipient"),
        "rfc822; bounce-y@dest.test"
    );
    assert_eq!(metric(&setup.server, "baton_bounces_generated_total"), 1);
    assert_eq!(metric(&setup.server, "baton_recipients_failed_total"), 2);
    setup.wait_events("bounce", 1);
    let events = setup.events();
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "failed")
        .map(|e| e["queue_id"].as_str().unwrap_or_default())
        .collect();
    assert!(failed.contains(&silent.as_str()), "{events:?}");
    let bounced: Vec<_> = events
        .iter()
        .filter(|e| e["event"] == "bounce")
        .map(|e| e["queue_id"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(bounced, [control.as_str()], "{events:?}");
    assert!(setup.dest.messages().is_empty());
    let elsewhere = elsewhere.stop();
    assert_eq!(elsewhere["messages_accepted"], 0, "{elsewhere}");
}

#[test]
fn two_recipients_refused_in_one_transaction_make_one_notification_listing_both() {
    let mut setup = Setup::start("");
    let body = "Subject: to two strangers\r\n\r\nhello\r\n";
    let recipients = ["bounce-a@dest.test", "bounce-b@dest.test"];
    let id = setup.send("alice@sender.test", &recipients, body);
    for address in recipients {
        setup.wait_status(&id, address, "failed");
    }
    let senders = &setup.senders;
    setup
        .server
        .wait_until("a notification at the sender's domain", || {
            senders.count() >= 1
        });
    setup.wait_queue_empty();

    let notices = setup.senders.messages();
    assert_eq!(notices.len(), 1, "one notification: {notices:?}");
    let groups = check_notification(&notices[0], "alice@sender.test");
    let listed: Vec<&str> = groups.iter().map(|g| field(g, "Final-Recipient")).collect();
    assert_eq!(
        listed,
        ["rfc822; bounce-a@dest.test", "rfc822; bounce-b@dest.test"]
    );
    for group in &groups {
        assert_eq!(field(group, "Status"), "5.1.1", "{group:?}");
    }
    let (attached, _) = attached_and_human(&notices[0]);
    assert!(attached.contains("Subject: to two strangers\r\n"));
    assert_eq!(metric(&setup.server, "baton_bounces_generated_total"), 1);
    let bounces = setup.wait_events("bounce", 1);
    assert_eq!(bounces.len(), 1, "{bounces:?}");
    let senders = setup.senders.stop();
    assert_eq!(senders["messages_accepted"], 1, "{senders}");
}
