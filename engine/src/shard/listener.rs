//! Listening sockets: one per listener per shard, with `SO_REUSEPORT`, so
//! the kernel spreads incoming connections over the shards without a
//! shared accept queue.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

/// Backlog of each listening socket.
const LISTEN_BACKLOG: i32 = 4096;

/// Fails if another process listens on `address`. Every shard binds with
/// `SO_REUSEPORT`, which would otherwise let a second baton (or anything
/// else with the option) share the port silently; a plain bind does not.
pub(crate) fn check_free(address: SocketAddr) -> io::Result<()> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())
}

pub(crate) fn bind(address: SocketAddr) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&address.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}
