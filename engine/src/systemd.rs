//! What systemd is told (`sd_notify`, the unit's `Type=notify`): that baton
//! is ready once it accepts SMTP, and that it is stopping. A datagram of
//! `KEY=value` lines to the socket `$NOTIFY_SOCKET` names (a path, or an
//! abstract name written `@name`); without it, as outside systemd, nothing
//! is sent.

#![forbid(unsafe_code)]

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...` lines) to systemd,
/// if it is listening. Failures are logged, never fatal: baton serves mail
/// whether or not its supervisor hears it.
pub fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let sent = UnixDatagram::unbound().and_then(|socket| match target.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let address = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            socket.send_to_addr(state.as_bytes(), &address)
        }
        None => socket.send_to(state.as_bytes(), &target),
    });
    if let Err(error) = sent {
        tracing::warn!(%error, socket = %target, "systemd notification not sent");
    }
}
