//! A full disk (issue 10, in part): a message that finds no room is
//! refused with `452 4.3.1` (a condition that passes, not `451`), no
//! half-made segment file is left behind, and mail is taken again once
//! there is room. Needs root: the spool is on a small tmpfs the test
//! mounts; without root the test says so and passes.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use baton_tests::{Baton, TestConfig};

struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "baton-test"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Takes every free byte of the filesystem at `dir`.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0xa5u8; 64 << 10];
    while file.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while file.write_all(&small).is_ok() {}
    path
}

fn temporary_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("tmp-"))
        .collect()
}

#[test]
fn a_full_disk_refuses_with_452_4_3_1_and_recovers_when_room_returns() {
    let Some(tmpfs) = Tmpfs::mount("8m") else {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    };
    let spool = tmpfs.0.path().join("spool");
    let mut baton = Baton::start_with(TestConfig {
        shards: Some(1),
        spool_path: Some(spool.clone()),
        ..TestConfig::default()
    });
    let filler = fill(tmpfs.0.path());
    let body = format!(
        "Subject: big\r\n\r\n{}",
        format!("{}\r\n", "x".repeat(998)).repeat(200)
    );
    let mut smtp = baton.connect();
    smtp.ehlo("client.test");
    let mut refused = None;
    for _ in 0..40 {
        let reply = smtp.send_message("a@example.com", &["b@example.org"], &body);
        if reply.code != 250 {
            refused = Some(reply);
            break;
        }
    }
    let refused = refused.expect("a full disk refuses mail");
    refused.assert_is(452, "4.3.1");
    // At most the one segment being made right now: a failed creation
    // removes its file (before, each retry left one behind).
    let left = temporary_files(&spool);
    assert!(left.len() <= 1, "{left:?}");
    assert!(baton.is_running());

    // Room again: mail is taken without a restart.
    std::fs::remove_file(filler).unwrap();
    let mut accepted = false;
    for _ in 0..10 {
        let reply = smtp.send_message("a@example.com", &["b@example.org"], &body);
        if reply.code == 250 {
            accepted = true;
            break;
        }
        reply.assert_is(452, "4.3.1");
    }
    assert!(
        accepted,
        "no message taken after the disk had room again\n{}",
        baton.log()
    );
    drop(smtp);
    baton.terminate();
}
