//! A session with a client written by others: Python's smtplib.

use std::process::Command;

use baton_tests::Baton;

#[test]
fn smtplib_sends_a_message_that_is_queued_per_destination() {
    let baton = Baton::start();
    let script = format!(
        r#"
import smtplib
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
code, ext = s.ehlo("client.test")
assert code == 250, code
assert s.has_extn("pipelining") and s.has_extn("size") and s.has_extn("8bitmime"), ext
refused = s.sendmail("alice@example.com", ["bob@example.org", "carol@Example.NET"],
                     "Subject: hello\r\n\r\nfrom smtplib\r\n")
assert refused == {{}}, refused
code, msg = s.docmd("NOOP")
assert code == 250
s.quit()
print("sent")
"#,
        port = baton.smtp.port()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "smtplib failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        baton.log()
    );
    let queue = baton.queue();
    assert_eq!(queue["messages"], 1, "{queue}");
    assert_eq!(queue["recipients"], 2, "{queue}");
    let destinations: Vec<_> = queue["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["destination"].as_str().unwrap().to_string(),
                d["ready"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        destinations,
        vec![
            ("example.net".to_string(), 1),
            ("example.org".to_string(), 1)
        ]
    );
    assert!(
        baton.log().contains("accepted"),
        "one log line per accepted message"
    );
}
