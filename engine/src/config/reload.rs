//! What a reload may change while baton runs, and what waits for a restart.

use super::Config;

impl Config {
    /// `new` as a reload puts it in force on a server running `self`: the
    /// parts only a restart can change (listeners and shards are set up
    /// once, the spool is open, the resolver and the MTA-STS thread were
    /// started with their settings) stay as in `self`, and are returned by
    /// their keys where `new` differs.
    pub fn live_part(&self, new: Config) -> (Config, Vec<&'static str>) {
        let mut live = new;
        let mut needs_restart = Vec::new();
        // `keep!(a.b, "a.b")`: if the new value differs, note the key and
        // keep the running value.
        macro_rules! keep {
            ($($field:ident).+, $key:literal) => {
                if live.$($field).+ != self.$($field).+ {
                    needs_restart.push($key);
                    live.$($field).+ = self.$($field).+.clone();
                }
            };
        }
        keep!(server, "server");
        keep!(listeners, "listener");
        keep!(spool, "spool");
        keep!(limits, "limits");
        keep!(smtp, "smtp");
        keep!(relay, "relay");
        keep!(dns, "dns");
        keep!(admin, "admin");
        keep!(auth, "auth");
        keep!(unsubscribe, "unsubscribe");
        keep!(http, "http");
        // The cluster thread is started once, with its Redis and name.
        keep!(cluster, "cluster");
        keep!(delivery.tls_ca, "delivery.tls_ca");
        keep!(delivery.mta_sts_port, "delivery.mta_sts_port");
        keep!(dkim_defaults.sign_threads, "dkim_defaults.sign_threads");
        keep!(suppression.enabled, "suppression.enabled");
        keep!(suppression.path, "suppression.path");
        keep!(log.format, "log.format");
        keep!(log.events, "log.events");
        // Each webhook's thread and cursor are set up at start.
        keep!(webhooks, "webhook");
        (live, needs_restart)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        Config::parse(text, "test.toml").expect("valid")
    }

    #[test]
    fn live_keys_change_and_restart_keys_are_kept_and_named() {
        let running = Config::default();
        let new = parse(
            "[delivery]\nhold = true\nmta_sts_port = 8443\n\
             [shaping]\nconnections_max = 3\n\
             [server]\nshards = 7\n\
             [[listener]]\naddress = \"127.0.0.1:2626\"\n\
             [log]\nlevel = \"debug\"\nformat = \"json\"\n",
        );
        let (live, needs_restart) = running.live_part(new);
        assert!(live.delivery.hold);
        assert_eq!(live.shaping.connections_max, 3);
        assert_eq!(live.log.level, "debug");
        assert_eq!(live.server, running.server);
        assert_eq!(live.listeners, running.listeners);
        assert_eq!(live.delivery.mta_sts_port, running.delivery.mta_sts_port);
        assert_eq!(live.log.format, running.log.format);
        assert_eq!(
            needs_restart,
            ["server", "listener", "delivery.mta_sts_port", "log.format"]
        );
    }

    #[test]
    fn webhooks_change_at_the_next_start() {
        let hook = "[log]\nevents = \"/var/log/baton/events.jsonl\"\n\
                    [[webhook]]\nurl = \"http://127.0.0.1:9/\"\n";
        let running = parse(hook);
        let (live, needs_restart) = running.live_part(parse(&hook.replace(":9/", ":10/")));
        assert_eq!(live.webhooks, running.webhooks);
        assert_eq!(needs_restart, ["webhook"]);
    }

    #[test]
    fn the_same_file_needs_no_restart() {
        let running = Config::default();
        let (live, needs_restart) = running.live_part(Config::default());
        assert_eq!(live, running);
        assert!(needs_restart.is_empty());
    }
}
