//! A recipient the next hop refuses with `5xx` fails at once, and the
//! sender gets one delivery status notification (RFC 3464) per message,
//! once all its recipients are final, listing every one that failed (see
//! `one_notification.rs` for failures on different attempts): from the null
//! reverse path, `multipart/report` with a human part, a
//! `message/delivery-status` part and the original's header section. It
//! is queued and delivered like any message, here to the sink that stands
//! for the sender's domain. A message from the null reverse path never
//! earns one (RFC 5321 §6.1, RFC 3464 §1).

use baton_tests::delivery::{
    field, get_json, metric, recipient_named, route, wait_queue_empty, wait_status, EventLog,
    Fields, Notification,
};
use baton_tests::sink::Sink;
use baton_tests::{Baton, TestConfig};

/// One baton delivering `dest.test` to one sink and `sender.test` (the
/// senders' domain, where notifications go) to another, with an event log.
struct Setup {
    server: Baton,
    dest: Sink,
    senders: Sink,
    events: EventLog,
}

impl Setup {
    /// `extra_routes`: more `[[route]]` tables (an exact domain wins over
    /// `*`, whatever the order).
    fn start(extra_routes: &str) -> Setup {
        let dest = Sink::start("127.0.0.2", &[]);
        let senders = Sink::start("127.0.0.3", &[]);
        let events = EventLog::new();
        let server = Baton::start_with(TestConfig {
            deliver: true,
            extra_toml: route("dest.test", dest.addr)
                + &route("sender.test", senders.addr)
                + extra_routes
                + &events.toml(),
            ..TestConfig::default()
        });
        Setup {
            server,
            dest,
            senders,
            events,
        }
    }

    /// Waits until `what` is at the sender's domain (its first
    /// notification) and nothing is left to deliver.
    fn wait_notified(&mut self, what: &str) {
        let senders = &self.senders;
        self.server.wait_until(what, || senders.count() >= 1);
        wait_queue_empty(&mut self.server);
    }

    /// The events of `kind`, once at least `count` of them are written.
    fn wait_events(&mut self, kind: &str, count: usize) -> Vec<serde_json::Value> {
        let events = &self.events;
        let of_kind = || -> Vec<serde_json::Value> {
            events
                .events()
                .into_iter()
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

/// Checks the parts every notification has, and returns the recipient
/// groups of its delivery-status part.
#[track_caller]
fn check_notification(text: &str, sender: &str) -> Vec<Fields> {
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
    let id = setup.server.submit(
        "alice@sender.test",
        &["bounce-bob@dest.test", "ok@dest.test"],
        body,
    );
    wait_status(&mut setup.server, &id, "ok@dest.test", "delivered");
    wait_status(&mut setup.server, &id, "bounce-bob@dest.test", "failed");
    // `baton queue show` says why each ended as it did.
    let failed = recipient_named(&setup.server, &id, "bounce-bob@dest.test");
    let reply = failed["last_reply"].as_str().unwrap_or_default();
    assert!(reply.starts_with("550 5.1.1"), "{failed}");
    let delivered = recipient_named(&setup.server, &id, "ok@dest.test");
    let reply = delivered["last_reply"].as_str().unwrap_or_default();
    assert!(reply.starts_with("250"), "{delivered}");
    setup.wait_notified("a notification at the sender's domain");

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
    let notification = get_json(&setup.server, &format!("/queue/{bounce_id}"));
    assert_eq!(notification["sender"], "", "{notification}");
    assert_eq!(
        Baton::shown_recipients(&notification),
        ["alice@sender.test"]
    );
    assert_eq!(notification["recipients"][0]["status"], "delivered");
    assert_eq!(metric(&setup.server, "baton_bounces_generated_total"), 1);
    assert_eq!(metric(&setup.server, "baton_recipients_failed_total"), 1);
    // Classified: in the failed event, in `queue show`, in /metrics.
    let failed_events = setup.wait_events("failed", 1);
    assert_eq!(
        failed_events[0]["category"], "invalid_recipient",
        "{:?}",
        failed_events[0]
    );
    assert_eq!(
        recipient_named(&setup.server, &id, "bounce-bob@dest.test")["category"],
        "invalid_recipient"
    );
    assert_eq!(
        metric(
            &setup.server,
            "baton_recipients_classified_total{category=\"invalid_recipient\"}"
        ),
        1
    );
}

#[test]
fn a_message_from_the_null_reverse_path_fails_without_a_notification() {
    // Whatever the notification's recipient, it would land at one of the
    // sinks: the senders' domain, `dest.test`, or this catch-all.
    let elsewhere = Sink::start("127.0.0.4", &[]);
    let mut setup = Setup::start(&route("*", elsewhere.addr));
    let body = "Subject: I am a bounce\r\n\r\nreport\r\n";
    let silent = setup.server.submit("", &["bounce-x@dest.test"], body);
    wait_status(&mut setup.server, &silent, "bounce-x@dest.test", "failed");
    // The same failure from a real sender does bounce: this one is the
    // control that shows notifications are generated and routed here.
    let body = "Subject: control\r\n\r\nreport\r\n";
    let control = setup
        .server
        .submit("alice@sender.test", &["bounce-y@dest.test"], body);
    wait_status(&mut setup.server, &control, "bounce-y@dest.test", "failed");
    setup.wait_notified("the control's notification");

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
    let events = setup.events.events();
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
    let id = setup.server.submit("alice@sender.test", &recipients, body);
    for address in recipients {
        wait_status(&mut setup.server, &id, address, "failed");
    }
    setup.wait_notified("a notification at the sender's domain");

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

/// `[delivery] soft_bounce = true` (Postfix's safety net): the same `550
/// 5.1.1` defers the recipient instead of failing it: it stays queued with
/// the reply, the `deferred` event says `soft_bounce`, no notification is
/// made, and the address does not go on the suppression list.
#[test]
fn soft_bounce_defers_a_permanent_failure_without_notifying_or_suppressing() {
    let dest = Sink::start("127.0.0.2", &[]);
    let senders = Sink::start("127.0.0.3", &[]);
    let events = EventLog::new();
    let mut server = Baton::start_with(TestConfig {
        deliver: true,
        delivery: vec![
            "soft_bounce = true".into(),
            "retry_schedule = [\"1h\"]".into(),
        ],
        extra_toml: route("dest.test", dest.addr)
            + &route("sender.test", senders.addr)
            + &events.toml(),
        ..TestConfig::default()
    });
    let id = server.submit(
        "alice@sender.test",
        &["bounce-bob@dest.test", "ok@dest.test"],
        "Subject: safety net\r\n\r\nhi\r\n",
    );
    wait_status(&mut server, &id, "ok@dest.test", "delivered");
    wait_status(&mut server, &id, "bounce-bob@dest.test", "deferred");
    let deferred = recipient_named(&server, &id, "bounce-bob@dest.test");
    let reply = deferred["last_reply"].as_str().unwrap_or_default();
    assert!(reply.starts_with("550 5.1.1"), "{deferred}");
    server.wait_until("the deferred event", || {
        !events.events_of("deferred", &id).is_empty()
    });
    let event = &events.events_of("deferred", &id)[0];
    assert_eq!(event["reason"], "soft_bounce", "{event}");
    assert!(events.events_of("failed", &id).is_empty());
    assert!(events.events_of("bounce", &id).is_empty());
    assert_eq!(
        senders.count(),
        0,
        "no notification while soft_bounce is on"
    );
    let (status, body) = server.admin_request("GET", "/suppression?address=bounce-bob@dest.test");
    assert_eq!(status, 404, "not suppressed: {body}");
}
