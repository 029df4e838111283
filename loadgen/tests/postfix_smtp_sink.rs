//! `loadgen send` → Postfix's `smtp-sink`: a server written by others;
//! what it dumps must be what `send` says was accepted. Skipped, with a
//! notice, where Postfix's test tools are not installed.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn loadgen_send_to_postfix_smtp_sink() {
    let Some(smtp_sink) = find_program("smtp-sink", "apt-get install postfix") else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    // smtp-sink drops to `nobody` before it writes its dump.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let dump = dir.path().join("dump");
    let port = free_port();
    let target = format!("127.0.0.1:{port}");
    let messages = 500;
    let mut server = Command::new(smtp_sink);
    if unsafe_is_root() {
        server.args(["-u", "nobody"]);
    }
    let mut server = server
        .arg("-D")
        .arg(&dump)
        .args([&target, "64"])
        .stdout(Stdio::null())
        .spawn()
        .expect("start smtp-sink");
    wait_for_listener(&target);
    let run = send(
        &target,
        &dir.path().join("send.json"),
        &["-n", &messages.to_string(), "-c", "8", "--rcpts", "2"],
    );
    // Not -M: smtp-sink exits on the last message before it answers it.
    terminate(&server);
    let _ = wait_with_deadline(&mut server, RUN_TIMEOUT);
    assert!(run.status.success(), "{}", run.stderr);
    let sent = &run.report;
    assert_eq!(num(sent, "/messages_accepted"), messages);
    assert_eq!(num(sent, "/recipients_accepted"), 2 * messages);

    let text = String::from_utf8_lossy(&std::fs::read(&dump).expect("the dump")).into_owned();
    let mut ids: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("X-Loadgen-Id: "))
        .map(str::trim)
        .collect();
    assert_eq!(ids.len() as u64, messages);
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len() as u64, messages, "no duplicates");
    let recipients = text
        .lines()
        .filter(|l| l.starts_with("X-Rcpt-Args: "))
        .count();
    assert_eq!(recipients as u64, 2 * messages);
}

/// smtp-sink refuses to run as root without `-u`.
fn unsafe_is_root() -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}
