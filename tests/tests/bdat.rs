//! CHUNKING (RFC 3030): BDAT sends a message in counted chunks, pipelined
//! with the envelope. A refused BDAT still consumes its chunk, so octets
//! that look like commands are never run as commands.

use baton_tests::{queued_id, Baton};

#[test]
fn a_message_in_pipelined_chunks_is_queued_like_the_same_message_by_data() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    let ehlo = smtp.ehlo("client.test");
    assert!(ehlo.lines.iter().any(|l| l == "CHUNKING"), "{ehlo:?}");

    // Envelope and three chunks in one write; the second chunk starts a
    // line with a dot, which BDAT carries as is (no dot-stuffing).
    let chunks: [&[u8]; 3] = [b"Subject: chunks\r\n\r\n", b"hello\r\n", b".dot\r\nend\r\n"];
    let mut group = b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\n".to_vec();
    for chunk in &chunks {
        group.extend_from_slice(format!("BDAT {}\r\n", chunk.len()).as_bytes());
        group.extend_from_slice(chunk);
    }
    group.extend_from_slice(b"BDAT 0 LAST\r\n");
    smtp.send(&group);
    smtp.expect(250, "2.1.0");
    smtp.expect(250, "2.1.5");
    for chunk in &chunks {
        let reply = smtp.expect(250, "2.0.0");
        assert_eq!(
            reply.text(),
            format!("2.0.0 {} octets received", chunk.len())
        );
    }
    let chunked = queued_id(&smtp.reply());

    // The same content with DATA, dot-stuffed by the client.
    let body = "Subject: chunks\r\n\r\nhello\r\n..dot\r\nend\r\n";
    let by_data = queued_id(&smtp.send_message("alice@example.com", &["bob@example.org"], body));

    // One chunk with LAST.
    let single_body = b"Subject: single\r\n\r\none chunk\r\n";
    smtp.send(b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<carol@example.net>\r\n");
    smtp.send(format!("BDAT {} LAST\r\n", single_body.len()).as_bytes());
    smtp.send(single_body);
    smtp.expect(250, "2.1.0");
    smtp.expect(250, "2.1.5");
    let single_id = queued_id(&smtp.reply());
    smtp.cmd("QUIT").assert_is(221, "2.0.0");

    let queue = baton.queue();
    assert_eq!(queue["messages"], 3, "{queue}");
    assert_eq!(queue["recipients"], 3, "{queue}");
    let chunked = baton.show(&chunked);
    let by_data = baton.show(&by_data);
    assert_eq!(Baton::shown_recipients(&chunked), ["bob@example.org"]);
    assert_eq!(chunked["recipients"][0]["status"], "pending", "{chunked}");
    // Stored in wire form after baton's Received: header, so the two
    // messages are the same size; and bigger than their content.
    let size = chunked["size"].as_u64().expect("size");
    assert_eq!(
        size,
        by_data["size"].as_u64().expect("size"),
        "{chunked}\n{by_data}"
    );
    assert!(size > body.len() as u64, "{chunked}");
    let single = baton.show(&single_id);
    assert!(single["size"].as_u64().expect("size") > single_body.len() as u64);
    assert_eq!(Baton::shown_recipients(&single), ["carol@example.net"]);
}

#[test]
fn a_refused_bdat_consumes_its_chunk_and_the_session_goes_on() {
    let baton = Baton::start();
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");

    // No MAIL: 503, and the 12 octets "RSET\r\nQUIT\r\n" are chunk content,
    // not commands.
    smtp.send(b"BDAT 12\r\nRSET\r\nQUIT\r\n");
    smtp.expect(503, "5.5.1");
    smtp.cmd("NOOP").assert_is(250, "2.0.0");

    // MAIL but no RCPT: 503, chunk consumed.
    smtp.send(b"MAIL FROM:<alice@example.com>\r\nBDAT 12 LAST\r\nQUIT\r\nRSET\r\n");
    smtp.expect(250, "2.1.0");
    let reply = smtp.expect(503, "5.5.1");
    assert!(reply.text().contains("RCPT"), "{reply:?}");
    smtp.cmd("NOOP").assert_is(250, "2.0.0");

    // The transaction is still open: RCPT and BDAT now succeed.
    smtp.cmd("RCPT TO:<bob@example.org>")
        .assert_is(250, "2.1.5");
    smtp.send(b"BDAT 10 LAST\r\nhi there\r\n");
    let id = queued_id(&smtp.reply());

    // DATA once BDAT has started is refused; the chunks go on.
    smtp.send(
        b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\nBDAT 4\r\nab\r\nDATA\r\n",
    );
    smtp.expect(250, "2.1.0");
    smtp.expect(250, "2.1.5");
    smtp.expect(250, "2.0.0");
    smtp.expect(503, "5.5.1");
    smtp.cmd("RSET").assert_is(250, "2.0.0");

    // A size that cannot be read leaves the end of the chunk unknowable:
    // refused, and the session ends rather than read content as commands.
    smtp.cmd("MAIL FROM:<alice@example.com>")
        .assert_is(250, "2.1.0");
    smtp.cmd("RCPT TO:<bob@example.org>")
        .assert_is(250, "2.1.5");
    smtp.send(b"BDAT ten LAST\r\n");
    smtp.expect(501, "5.5.4");
    assert!(smtp.closed());

    // Only the one complete message; the aborted one left nothing.
    assert_eq!(baton.queued_messages(), 1);
    assert_eq!(
        Baton::shown_recipients(&baton.show(&id)),
        ["bob@example.org"]
    );
}
