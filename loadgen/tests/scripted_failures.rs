//! The sink's scripted failures show in `send`'s reply-code counts, and
//! both sides agree on what was accepted.

mod common;

use common::*;

#[test]
fn local_parts_choose_each_recipient_outcome() {
    let sink = Sink::start(&[]);
    let run = sink.send(&[
        "-n",
        "600",
        "-c",
        "4",
        "--seed",
        "3",
        "--locals",
        "user{n}:1,tempfail-{n}:1,bounce-{n}:1",
    ]);
    assert!(run.status.success());
    let sent = &run.report;
    let (ok, tempfail, bounce) = (
        replies(sent, "RCPT", 250),
        replies(sent, "RCPT", 451),
        replies(sent, "RCPT", 550),
    );
    assert_eq!(ok + tempfail + bounce, 600);
    assert!(
        ok > 100 && tempfail > 100 && bounce > 100,
        "{ok} {tempfail} {bounce}"
    );
    // A message whose only recipient failed never gets to its content.
    assert_eq!(replies(sent, "DATA", 554), tempfail + bounce);
    assert_eq!(num(sent, "/messages_accepted"), ok);
    assert_eq!(num(sent, "/messages_failed"), tempfail + bounce);
    // RSET before the next MAIL, not before QUIT: up to one fewer per
    // connection.
    let rsets = replies(sent, "RSET", 250);
    assert!(
        (tempfail + bounce - 4..=tempfail + bounce).contains(&rsets),
        "{rsets}"
    );
    assert!(sent["reply_samples"]["RCPT 451"]
        .as_str()
        .expect("a sample")
        .starts_with("451 4.2.0"));

    let got = sink.stop();
    assert_eq!(num(&got, "/messages_accepted"), ok);
    assert_eq!(num(&got, "/recipients_refused"), tempfail + bounce);
    assert_eq!(num(&got, "/replies/451"), tempfail);
    assert_eq!(num(&got, "/ids/verify/messages_lost"), 0);
}

#[test]
fn message_level_scripts_and_probabilities() {
    let sink = Sink::start(&["--message-tempfail", "0.3", "--seed", "4"]);
    let run = sink.send(&["-n", "400", "-c", "4", "--rcpts", "2", "--seed", "4"]);
    assert!(run.status.success());
    let sent = &run.report;
    let refused = replies(sent, "DATA-END", 451);
    assert!((60..200).contains(&refused), "{refused} of 400 at p=0.3");
    assert_eq!(replies(sent, "DATA-END", 250) + refused, 400);
    let got = sink.stop();
    assert_eq!(num(&got, "/messages_refused"), refused);
    assert_eq!(num(&got, "/messages_accepted"), 400 - refused);
    assert_eq!(num(&got, "/ids/verify/messages_lost"), 0);
    assert_eq!(num(&got, "/ids/verify/messages_unexpected"), 0);

    let sink = Sink::start(&[]);
    let run = sink.send(&[
        "-n",
        "10",
        "--locals",
        "databounce-{n}",
        "--rcpts",
        "2",
        "--users",
        "1",
    ]);
    // A databounce- recipient in every message: every content refused.
    // (Regression: with `user{n},databounce-{n}` each recipient was drawn
    // at random, so a message could get two user0s and be accepted.)
    let sent = &run.report;
    assert_eq!(replies(sent, "DATA-END", 554), 10);
    assert!(!run.status.success(), "no message accepted is a failed run");
    assert!(
        run.stderr
            .contains("accepted no message (DATA-END: 554 5.6.0 scripted"),
        "{}",
        run.stderr
    );
    assert_eq!(num(&sink.stop(), "/messages_refused"), 10);
}

#[test]
fn disconnects_fail_what_was_in_flight_and_nothing_is_lost() {
    let sink = Sink::start(&["--disconnect", "0.05", "--seed", "5"]);
    let run = sink.send(&["-n", "1000", "-c", "8", "--seed", "5"]);
    assert!(run.status.success());
    let sent = &run.report;
    let closed = num(sent, "/connection_errors/closed/count");
    assert!(closed > 10, "{closed} disconnects at p=0.05");
    assert!(num(sent, "/messages_failed") >= closed);
    assert_eq!(
        num(sent, "/messages_accepted") + num(sent, "/messages_failed"),
        1000
    );
    let got = sink.stop();
    assert_eq!(num(&got, "/disconnects"), closed);
    assert_eq!(
        num(&got, "/messages_accepted"),
        num(sent, "/messages_accepted")
    );
    assert_eq!(num(&got, "/ids/verify/messages_lost"), 0);
    assert_eq!(num(&got, "/ids/verify/messages_unexpected"), 0);
}

#[test]
fn connection_cap_and_connect_failures_answer_421() {
    let sink = Sink::start(&["--max-connections", "2"]);
    let run = sink.send(&["-n", "300", "-c", "6", "--seed", "6"]);
    assert!(run.status.success());
    let sent = &run.report;
    assert_eq!(num(sent, "/messages_accepted"), 300);
    let turned_away = replies(sent, "greeting", 421);
    assert!(turned_away > 0);
    let got = sink.stop();
    assert!(num(&got, "/connections_peak") <= 2);
    assert_eq!(num(&got, "/connections_over_limit"), turned_away);

    let sink = Sink::start(&["--connect-tempfail", "0.5", "--seed", "7"]);
    let run = sink.send(&["-n", "200", "-c", "4", "-m", "10", "--seed", "7"]);
    assert!(run.status.success());
    let sent = &run.report;
    assert_eq!(num(sent, "/messages_accepted"), 200);
    let tempfails = replies(sent, "greeting", 421);
    assert!(tempfails > 0);
    assert_eq!(num(sent, "/connection_errors/refused/count"), tempfails);
    let got = sink.stop();
    assert_eq!(num(&got, "/replies/421"), tempfails);
}
