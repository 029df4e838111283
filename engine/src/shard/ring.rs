//! The ring: the one place in the engine that talks to io_uring, and with
//! the spool's mapping the only `unsafe` in baton.
//!
//! Every operation pushed here borrows memory (a buffer) or a descriptor
//! that the kernel uses until the operation's completion is reaped. The
//! callers in `shard/` keep the promise that makes this sound: the buffer
//! is owned by a connection slot or a pending spool operation that is not
//! freed, moved out of, or touched until the completion with the same
//! token arrives — also while a connection is torn down, which is done by
//! cancelling and then waiting for the completion, never by dropping.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

/// A completion: the token given at submission, the result, the flags.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Completion {
    pub token: u64,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// Whether a multishot operation stays armed after this completion.
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }
}

pub(crate) struct Ring {
    ring: IoUring,
}

impl Ring {
    pub fn new(entries: u32, sqpoll: bool) -> io::Result<Ring> {
        let mut builder = IoUring::builder();
        if sqpoll {
            // Idle time before the kernel's poll thread sleeps.
            builder.setup_sqpoll(SQPOLL_IDLE_MS);
        } else {
            // One thread submits to this ring (its shard), and completion
            // work may wait for the shard's next system call instead of
            // interrupting it (Linux 6.0 and 5.19); older kernels refuse
            // the flags, and the ring is built without them.
            let mut tuned = IoUring::builder();
            tuned.setup_single_issuer().setup_coop_taskrun();
            if let Ok(ring) = tuned.build(entries) {
                return Ok(Ring { ring });
            }
        }
        Ok(Ring {
            ring: builder.build(entries)?,
        })
    }

    fn push(&mut self, entry: squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: every entry built by the methods below points only at
            // memory whose owner outlives the operation (module docs).
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(());
            }
            // Full: hand what is queued to the kernel to make room.
            self.ring.submit()?;
        }
    }

    /// Multishot accept on a listening socket.
    pub fn accept_multi(&mut self, listener: RawFd, token: u64) -> io::Result<()> {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .flags(libc::SOCK_CLOEXEC)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// Receives into `buf`.
    ///
    /// # Safety
    /// `buf` must stay allocated and untouched until the completion for
    /// `token` has been reaped.
    pub unsafe fn recv(&mut self, fd: RawFd, buf: *mut u8, len: u32, token: u64) -> io::Result<()> {
        let entry = opcode::Recv::new(types::Fd(fd), buf, len)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// Sends from `buf`.
    ///
    /// # Safety
    /// As for [`Ring::recv`].
    pub unsafe fn send(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        token: u64,
    ) -> io::Result<()> {
        let entry = opcode::Send::new(types::Fd(fd), buf, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// Connects a socket to the address at `addr`.
    ///
    /// # Safety
    /// `addr` (`len` bytes) must stay allocated and untouched until the
    /// completion for `token` has been reaped.
    pub unsafe fn connect(
        &mut self,
        fd: RawFd,
        addr: *const libc::sockaddr,
        len: libc::socklen_t,
        token: u64,
    ) -> io::Result<()> {
        let entry = opcode::Connect::new(types::Fd(fd), addr, len)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// Sends what the `msghdr`'s iovecs point at.
    ///
    /// # Safety
    /// `msg`, its iovec array and every buffer they point at must stay
    /// allocated and untouched until the completion for `token` has been
    /// reaped.
    pub unsafe fn sendmsg(
        &mut self,
        fd: RawFd,
        msg: *const libc::msghdr,
        token: u64,
    ) -> io::Result<()> {
        let entry = opcode::SendMsg::new(types::Fd(fd), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// Reads into `buf` (an eventfd: 8 bytes).
    ///
    /// # Safety
    /// As for [`Ring::recv`].
    pub unsafe fn read(&mut self, fd: RawFd, buf: *mut u8, len: u32, token: u64) -> io::Result<()> {
        let entry = opcode::Read::new(types::Fd(fd), buf, len)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// Writes `buf` at `offset` of a file.
    ///
    /// # Safety
    /// As for [`Ring::recv`].
    pub unsafe fn write_at(
        &mut self,
        fd: RawFd,
        buf: *const u8,
        len: u32,
        offset: u64,
        token: u64,
    ) -> io::Result<()> {
        let entry = opcode::Write::new(types::Fd(fd), buf, len)
            .offset(offset)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// `fdatasync`. The descriptor must stay open until the completion.
    pub fn datasync(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let entry = opcode::Fsync::new(types::Fd(fd))
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// Cancels the operation submitted with `target`. Its completion still
    /// arrives (with `-ECANCELED`, or its result if it won the race).
    pub fn cancel(&mut self, target: u64, token: u64) -> io::Result<()> {
        let entry = opcode::AsyncCancel::new(target).build().user_data(token);
        self.push(entry)
    }

    /// Submits what is queued and waits for at least one completion or the
    /// timeout.
    pub fn submit_and_wait(&mut self, timeout: Duration) -> io::Result<()> {
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            Err(err)
                if err.raw_os_error() == Some(libc::ETIME)
                    || err.raw_os_error() == Some(libc::EINTR) =>
            {
                Ok(())
            }
            // The completion queue is full: reap before submitting more.
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) => Ok(()),
            Err(err) => Err(err),
        }
    }

    /// Submits what is queued without waiting.
    pub fn submit(&mut self) -> io::Result<()> {
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(err)
                if err.raw_os_error() == Some(libc::EINTR)
                    || err.raw_os_error() == Some(libc::EBUSY) =>
            {
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    /// Moves every available completion into `out`.
    pub fn reap(&mut self, out: &mut Vec<Completion>) {
        for cqe in self.ring.completion() {
            out.push(Completion {
                token: cqe.user_data(),
                result: cqe.result(),
                flags: cqe.flags(),
            });
        }
    }
}

const SQPOLL_IDLE_MS: u32 = 2000;

/// An eventfd another thread writes to wake this shard.
pub(crate) struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call; the descriptor it returns is ours.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        Ok(EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    pub fn raw(&self) -> RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }

    /// Wakes the shard whose ring reads this eventfd.
    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local to our descriptor. A full
        // counter (EAGAIN) means a wake-up is pending anyway.
        let _ = unsafe { libc::write(self.raw(), (&one as *const u64).cast(), 8) };
    }
}

/// Raises the soft limit on open descriptors to the hard limit (a service
/// inherits 1024 from most shells and units, far below what its connection
/// limits allow). Returns the limit now in force.
pub fn raise_descriptor_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live local that getrlimit fills in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `raised` is a live local that setrlimit only reads.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Ok(raised.rlim_cur);
        }
    }
    Ok(limit.rlim_cur)
}

/// Pins the calling thread to one CPU.
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: `set` is a plain bitmask living on this stack frame;
    // sched_setaffinity only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
