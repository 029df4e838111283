//! The shipped rules against real replies: `replies.tsv` holds a few
//! hundred replies as mailbox providers and common MTAs send them, each
//! with the category a bulk sender's relay should give it and the page it
//! was collected from.

use super::*;

/// `550 5.1.1 text`, `550-5.1.1 text`, `421 4.7.0 [TSS04] text`, `550 text`.
fn parse(line: &str) -> Reply {
    let code: u16 = line[..3].parse().expect("a reply code");
    let rest = line[3..].trim_start_matches([' ', '-']);
    let (first, tail) = rest.split_once(' ').unwrap_or((rest, ""));
    let enhanced = {
        let parts: Vec<&str> = first.trim_end_matches(',').split('.').collect();
        match parts.as_slice() {
            [c, s, d] => match (c.parse::<u8>(), s.parse::<u16>(), d.parse::<u16>()) {
                (Ok(c), Ok(s), Ok(d)) if (2..=5).contains(&c) => Some((c, s, d)),
                _ => None,
            },
            _ => None,
        }
    };
    let text = if enhanced.is_some() { tail } else { rest };
    Reply::new(code, enhanced, text.to_owned())
}

#[test]
fn real_replies_get_the_category_a_sender_would_give_them() {
    let classifier = Classifier::shipped();
    let mut wrong = Vec::new();
    let mut rows = 0;
    for line in include_str!("replies.tsv").lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        assert!(
            fields.len() >= 2,
            "a row is category, reply, source: {line:?}"
        );
        let expected =
            Category::parse(fields[0]).unwrap_or_else(|| panic!("category {:?}", fields[0]));
        let got = classifier.classify(&parse(fields[1]));
        rows += 1;
        if got != expected {
            wrong.push(format!(
                "{} (expected {})\t{}",
                got.as_str(),
                expected.as_str(),
                fields[1]
            ));
        }
    }
    assert!(rows >= 200, "only {rows} rows");
    assert!(
        wrong.is_empty(),
        "{} of {rows} misclassified:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn operator_rules_come_first_and_errors_name_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        "[[rule]]\ncategory = \"reputation_block\"\ncode = \"5xx\"\ntext = 'mailbox unavailable'\n",
    )
    .unwrap();
    let reply = Reply::new(550, None, "Requested action not taken: mailbox unavailable");
    assert_eq!(
        Classifier::shipped().classify(&reply),
        Category::InvalidRecipient
    );
    assert_eq!(
        Classifier::load(Some(&path)).unwrap().classify(&reply),
        Category::ReputationBlock
    );
    std::fs::write(&path, "[[rule]]\ncategory = \"nope\"\ncode = \"5xx\"\n").unwrap();
    let err = Classifier::load(Some(&path)).err().unwrap();
    assert!(err.contains("rule 1") && err.contains("nope"), "{err}");
    std::fs::write(&path, "[[rule]]\ncategory = \"policy\"\ntext = '('\n").unwrap();
    assert!(Classifier::load(Some(&path))
        .err()
        .unwrap()
        .contains("text"));
    std::fs::write(
        &path,
        "[[rule]]\ncategory = \"policy\"\nenhanced = \"5.x.1\"\n",
    )
    .unwrap();
    assert!(Classifier::load(Some(&path))
        .err()
        .unwrap()
        .contains("enhanced"));
}

#[test]
fn local_failures_and_bare_codes_fall_back_to_their_class() {
    let c = Classifier::shipped();
    assert_eq!(
        c.classify(&Reply::new(451, Some((4, 4, 1)), "connection refused")),
        Category::Transient
    );
    assert_eq!(
        c.classify(&Reply::new(550, Some((5, 1, 2)), "no such domain")),
        Category::BadDomain
    );
    assert_eq!(
        c.classify(&Reply::new(556, Some((5, 1, 10)), "null MX")),
        Category::BadDomain
    );
    assert_eq!(c.classify(&Reply::new(451, None, "")), Category::Transient);
    assert_eq!(c.classify(&Reply::new(554, None, "")), Category::Other);
}

#[test]
fn hard_bounces_are_permanent_bad_mailboxes_and_domains() {
    let c = Classifier::shipped();
    let hard = |code, enhanced, text: &str| {
        let reply = Reply::new(code, enhanced, text.to_owned());
        is_hard_bounce(&reply, c.classify(&reply))
    };
    assert!(hard(550, Some((5, 1, 1)), "user unknown"));
    assert!(hard(550, Some((5, 1, 2)), "no such domain"));
    assert!(hard(556, Some((5, 1, 10)), "null MX"));
    assert!(hard(550, None, "No such user here"));
    assert!(!hard(552, Some((5, 2, 2)), "mailbox full"));
    assert!(!hard(550, Some((5, 7, 1)), "rejected by policy"));
    assert!(!hard(550, None, ""));
    assert!(!hard(450, Some((4, 1, 1)), "user unknown, try later"));
}
