#!/usr/bin/env bash
# A private Postfix instance as a pure relay on loopback, for `loadgen bench
# --postfix`: everything it accepts on 127.0.0.1:PORT goes to
# [127.0.0.1]:SINKPORT. Its own config, queue and data directories under
# DIR; nothing of the system's Postfix is used or touched (no service is
# started, /etc/postfix is left alone).
#
#   bench/postfix-relay.sh start PORT SINKPORT DIR [CERT KEY]   # installs Postfix if missing
#   bench/postfix-relay.sh stop DIR
#
# Relay settings (issue 4): inet_interfaces = 127.0.0.1, empty mydestination,
# mynetworks = 127.0.0.0/8, relayhost = [127.0.0.1]:SINKPORT, in_flow_delay
# = 0, the queue on Postfix's default durable settings, chroot off. The log
# goes to DIR/maillog (there is no syslog here). Needs root: the master
# process starts as root and drops to mail_owner.
#
# TLS (`loadgen bench --tls`): with CERT (a PEM chain) and KEY (PEM), smtpd
# offers STARTTLS with them (smtpd_tls_security_level = may) and smtp
# requires TLS to the sink without checking its certificate
# (smtp_tls_security_level = encrypt), like baton's `[shaping] tls =
# "required"`. Without them both sides are plain text (security level none,
# said explicitly, so that the plain row stays plain whatever the defaults).
set -euo pipefail

usage() {
    echo "usage: $0 start PORT SINKPORT DIR [CERT KEY] | stop DIR" >&2
    exit 2
}

# The TLS lines of main.cf: STARTTLS in and required out with a certificate
# and key (copied under DIR/etc), plain text both ways without.
tls_settings() {
    local dir=$1 cert=${2:-} key=${3:-}
    if [ -z "$cert" ]; then
        printf '%s\n' "smtpd_tls_security_level = none" "smtp_tls_security_level = none"
        return
    fi
    install -m 0644 "$cert" "$dir/etc/tls-chain.pem"
    install -m 0600 "$key" "$dir/etc/tls-key.pem"
    printf '%s\n' \
        "smtpd_tls_security_level = may" \
        "smtpd_tls_cert_file = $dir/etc/tls-chain.pem" \
        "smtpd_tls_key_file = $dir/etc/tls-key.pem" \
        "smtp_tls_security_level = encrypt" \
        "smtp_tls_loglevel = 0" \
        "smtpd_tls_loglevel = 0"
}

install_postfix() {
    command -v postfix >/dev/null 2>&1 || [ -x /usr/sbin/postfix ] && return 0
    echo "postfix-relay: installing Postfix from Debian's packages" >&2
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q postfix >&2
}

start() {
    local port=$1 sink_port=$2 dir=$3 cert=${4:-} key=${5:-}
    install_postfix
    export PATH="$PATH:/usr/sbin:/usr/lib/postfix/sbin"
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data"
    dir=$(cd "$dir" && pwd)
    # Run directories of the package (daemon programs, shared files).
    local daemon_dir meta_dir shlib_dir
    daemon_dir=$(postconf -h -d daemon_directory)
    meta_dir=$(postconf -h -d meta_directory)
    shlib_dir=$(postconf -h -d shlib_directory)
    local tls_lines
    tls_lines=$(tls_settings "$dir" "$cert" "$key")
    cat > "$dir/etc/main.cf" <<EOF
compatibility_level = 3.6
config_directory = $dir/etc
queue_directory = $dir/queue
data_directory = $dir/data
daemon_directory = $daemon_dir
meta_directory = $meta_dir
shlib_directory = $shlib_dir
mail_owner = postfix
setgid_group = postdrop
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
myhostname = postfix-relay.invalid
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:$sink_port
in_flow_delay = 0
smtp_dns_support_level = disabled
$tls_lines
EOF
    # The package's master.cf with chroot off (column 5) and smtpd moved
    # from port 25 to PORT.
    awk -v port="$port" '
        /^#/ || /^[ \t]/ || NF < 8 { print; next }
        { if ($1 == "smtp" && $2 == "inet") $1 = "127.0.0.1:" port; $5 = "n"; print }
    ' /usr/share/postfix/master.cf.dist > "$dir/etc/master.cf"
    # The queue belongs to postfix, and maildrop/public to postdrop.
    postfix -c "$dir/etc" set-permissions >/dev/null 2>&1 || chown -R postfix "$dir/queue" "$dir/data"
    # Postfix reports a bad configuration to syslog only (there is none
    # here) unless stderr is a terminal: give it one to show why.
    if ! postfix -c "$dir/etc" check; then
        script -qec "postfix -c $dir/etc check" /dev/null >&2 || true
        exit 1
    fi
    postfix -c "$dir/etc" start
    # Ready when smtpd answers.
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "postfix-relay: nothing listens on 127.0.0.1:$port; see $dir/maillog" >&2
    exit 1
}

stop() {
    local dir=$1
    [ -f "$dir/etc/main.cf" ] || { echo "postfix-relay: no instance in $dir" >&2; exit 1; }
    export PATH="$PATH:/usr/sbin"
    postfix -c "$dir/etc" stop >/dev/null 2>&1 || true
    # `postfix stop` returns before the master has gone; wait for its pid file.
    for _ in $(seq 1 100); do
        [ -s "$dir/queue/pid/master.pid" ] || return 0
        kill -0 "$(tr -d ' ' < "$dir/queue/pid/master.pid")" 2>/dev/null || return 0
        sleep 0.1
    done
}

case "${1:-}" in
    start) [ $# -eq 4 ] || [ $# -eq 6 ] || usage; start "$2" "$3" "$4" "${5:-}" "${6:-}" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    *) usage ;;
esac
