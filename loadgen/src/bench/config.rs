//! What each relay under test is told: baton's configuration file, the
//! arguments of `bench/postfix-relay.sh`, the environment of
//! `bench/kumomta-relay.lua`. Pure functions of the bench's choices, so
//! that they are tested without the relays (which [`super::relay`]
//! starts).
//!
//! Every relay is set up the same way: one listener on a loopback port,
//! everything relayed to the sink, and with `--tls` STARTTLS on both hops
//! with the bench's certificate ([`super::certs`]) and encryption to the
//! sink required (a relay that fell back to plain text would make the TLS
//! row measure the wrong thing).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::Path;

use super::certs::CertFiles;

/// baton's configuration: defaults, a free loopback port, a spool of its
/// own, no admin API, and every domain routed to the sink. With TLS: a
/// STARTTLS listener with the bench's certificate, and TLS required on
/// delivery.
///
/// Without TLS nothing is said about it: baton then uses STARTTLS
/// opportunistically, and the plain rows stay plain because the bench's
/// sink does not offer it.
pub fn baton_config(
    listen: SocketAddr,
    spool: &Path,
    sink: SocketAddr,
    tls: Option<&CertFiles>,
) -> String {
    let mut text = String::from("[server]\nhostname = \"bench.invalid\"\n\n");
    text += &format!("[[listener]]\naddress = \"{listen}\"\n");
    if let Some(files) = tls {
        text += &format!(
            "tls = \"starttls\"\n\n[tls]\ncertificate = {}\nkey = {}\n",
            toml_string(&files.chain),
            toml_string(&files.key)
        );
    }
    text += &format!("\n[spool]\npath = {}\n", toml_string(spool));
    text += "\n[admin]\naddress = \"\"\n";
    if tls.is_some() {
        text += "\n[shaping]\ntls = \"required\"\n";
    }
    text += &format!("\n[[route]]\ndomain = \"*\"\nnext_hop = \"{sink}\"\n");
    text
}

/// A path as a TOML basic string.
fn toml_string(path: &Path) -> String {
    let mut out = String::from("\"");
    for c in path.to_string_lossy().chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `bench/postfix-relay.sh start PORT SINKPORT DIR [CERT KEY]`: with a
/// certificate and key, smtpd offers STARTTLS with them and smtp requires
/// TLS to the sink.
pub fn postfix_start_args(
    port: u16,
    sink: SocketAddr,
    dir: &Path,
    tls: Option<&CertFiles>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "start".into(),
        port.to_string().into(),
        sink.port().to_string().into(),
        dir.into(),
    ];
    if let Some(files) = tls {
        args.extend([files.chain.clone().into(), files.key.clone().into()]);
    }
    args
}

/// How one kumod of a bench runs.
pub struct KumodSettings<'a> {
    /// Its SMTP listener.
    pub listen: SocketAddr,
    /// Its HTTP listener (kumod always starts one; the bench does not use
    /// it, but it must not collide with anything).
    pub http: SocketAddr,
    /// Where every domain is delivered.
    pub sink: SocketAddr,
    /// Its spool and logs.
    pub base: &'a Path,
    /// `msg:set_force_sync(true)` on every message: synced before `250`.
    pub force_sync: bool,
    pub tls: Option<&'a CertFiles>,
}

/// The environment variables `bench/kumomta-relay.lua` reads. TLS is on
/// when the certificate variables are set.
pub const KUMOD_ENV_NAMES: [&str; 7] = [
    "KUMO_BENCH_LISTEN",
    "KUMO_BENCH_HTTP",
    "KUMO_BENCH_SINK",
    "KUMO_BENCH_BASE",
    "KUMO_BENCH_FORCE_SYNC",
    "KUMO_BENCH_TLS_CERTIFICATE",
    "KUMO_BENCH_TLS_KEY",
];

/// kumod's environment for `bench/kumomta-relay.lua`.
pub fn kumod_env(settings: &KumodSettings) -> Vec<(&'static str, OsString)> {
    let [listen, http, sink, base, force_sync, certificate, key] = KUMOD_ENV_NAMES;
    let mut env: Vec<(&'static str, OsString)> = vec![
        (listen, settings.listen.to_string().into()),
        (http, settings.http.to_string().into()),
        (sink, settings.sink.to_string().into()),
        (base, settings.base.into()),
        (
            force_sync,
            if settings.force_sync { "1" } else { "0" }.into(),
        ),
    ];
    if let Some(files) = settings.tls {
        env.push((certificate, files.chain.clone().into()));
        env.push((key, files.key.clone().into()));
    }
    env
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn files() -> CertFiles {
        CertFiles {
            ca: "/b/ca.pem".into(),
            chain: "/b/chain.pem".into(),
            key: "/b/key.pem".into(),
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn plain_baton_config_says_nothing_about_tls() {
        let text = baton_config(addr(2000), Path::new("/w/spool"), addr(3000), None);
        assert_eq!(
            text,
            "[server]\nhostname = \"bench.invalid\"\n\n\
             [[listener]]\naddress = \"127.0.0.1:2000\"\n\n\
             [spool]\npath = \"/w/spool\"\n\n\
             [admin]\naddress = \"\"\n\n\
             [[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1:3000\"\n"
        );
    }

    #[test]
    fn tls_baton_config_has_a_starttls_listener_and_requires_tls_outbound() {
        let files = files();
        let text = baton_config(addr(2000), Path::new("/w/spool"), addr(3000), Some(&files));
        assert_eq!(
            text,
            "[server]\nhostname = \"bench.invalid\"\n\n\
             [[listener]]\naddress = \"127.0.0.1:2000\"\ntls = \"starttls\"\n\n\
             [tls]\ncertificate = \"/b/chain.pem\"\nkey = \"/b/key.pem\"\n\n\
             [spool]\npath = \"/w/spool\"\n\n\
             [admin]\naddress = \"\"\n\n\
             [shaping]\ntls = \"required\"\n\n\
             [[route]]\ndomain = \"*\"\nnext_hop = \"127.0.0.1:3000\"\n"
        );
    }

    #[test]
    fn paths_are_escaped_as_toml_strings() {
        let path = PathBuf::from("/tmp/a \"b\"\\c\td");
        assert_eq!(toml_string(&path), r#""/tmp/a \"b\"\\c\u0009d""#);
    }

    #[test]
    fn postfix_gets_a_certificate_and_key_only_with_tls() {
        let dir = Path::new("/w/postfix");
        let plain = postfix_start_args(2000, addr(3000), dir, None);
        assert_eq!(plain, ["start", "2000", "3000", "/w/postfix"]);
        let files = files();
        let tls = postfix_start_args(2000, addr(3000), dir, Some(&files));
        assert_eq!(
            tls,
            [
                "start",
                "2000",
                "3000",
                "/w/postfix",
                "/b/chain.pem",
                "/b/key.pem"
            ]
        );
    }

    #[test]
    fn kumod_env_names_each_setting_and_tls_only_when_asked() {
        let files = files();
        let mut settings = KumodSettings {
            listen: addr(2000),
            http: addr(2001),
            sink: addr(3000),
            base: Path::new("/w/kumo"),
            force_sync: false,
            tls: None,
        };
        let plain: Vec<(&str, String)> = kumod_env(&settings)
            .into_iter()
            .map(|(k, v)| (k, v.to_string_lossy().into_owned()))
            .collect();
        assert_eq!(
            plain,
            [
                ("KUMO_BENCH_LISTEN", "127.0.0.1:2000".to_string()),
                ("KUMO_BENCH_HTTP", "127.0.0.1:2001".to_string()),
                ("KUMO_BENCH_SINK", "127.0.0.1:3000".to_string()),
                ("KUMO_BENCH_BASE", "/w/kumo".to_string()),
                ("KUMO_BENCH_FORCE_SYNC", "0".to_string()),
            ]
        );
        settings.force_sync = true;
        settings.tls = Some(&files);
        let tls = kumod_env(&settings);
        assert_eq!(tls.len(), KUMOD_ENV_NAMES.len());
        assert_eq!(tls[4], ("KUMO_BENCH_FORCE_SYNC", "1".into()));
        assert_eq!(
            tls[5],
            ("KUMO_BENCH_TLS_CERTIFICATE", "/b/chain.pem".into())
        );
        assert_eq!(tls[6], ("KUMO_BENCH_TLS_KEY", "/b/key.pem".into()));
    }
}
