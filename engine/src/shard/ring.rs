//! The ring: the one place in the engine that talks to io_uring, and with
//! the spool's mapping the only `unsafe` in baton.
//!
//! Receives take their buffer from a provided-buffer ring ([`BufRing`])
//! when data arrives, so an idle connection holds no receive buffer; the
//! buffer is lent to the shard with the completion and given back once it
//! is handled.
//!
//! Every other operation pushed here borrows memory (a buffer) or a
//! descriptor that the kernel uses until its completion is reaped. The
//! callers in `shard/` keep the promise that makes this sound: the buffer
//! is owned by a connection slot or a pending spool operation that is not
//! freed, moved out of, or touched until the completion with the same
//! token arrives — also while a connection is torn down, which is done by
//! cancelling and then waiting for the completion, never by dropping.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
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

    /// The buffer of the shard's [`BufRing`] the kernel filled, if any.
    /// It must go back with [`BufRing::give_back`].
    pub fn buffer(&self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
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

    /// Receives into a buffer the kernel picks from the shard's buffer
    /// ring ([`BufRing`]) when data arrives, so a connection waiting for
    /// input holds no buffer. The completion names the buffer
    /// ([`Completion::buffer`]); `-ENOBUFS` says the ring was empty.
    pub fn recv_select(&mut self, fd: RawFd, token: u64) -> io::Result<()> {
        let entry = opcode::Recv::new(
            types::Fd(fd),
            std::ptr::null_mut(),
            RECV_BUFFER_BYTES as u32,
        )
        .buf_group(RECV_BUFFER_GROUP)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(token);
        self.push(entry)
    }

    /// Sends from `buf`.
    ///
    /// # Safety
    /// `buf` must stay allocated and untouched until the completion for
    /// `token` has been reaped.
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
    /// `buf` must stay allocated and untouched until the completion for
    /// `token` has been reaped.
    pub unsafe fn read(&mut self, fd: RawFd, buf: *mut u8, len: u32, token: u64) -> io::Result<()> {
        let entry = opcode::Read::new(types::Fd(fd), buf, len)
            .build()
            .user_data(token);
        self.push(entry)
    }

    /// Writes `buf` at `offset` of a file.
    ///
    /// # Safety
    /// `buf` must stay allocated and untouched until the completion for
    /// `token` has been reaped.
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

/// Bytes one receive can bring in: one buffer of the ring. Large enough
/// that a message streamed over loopback or a fast link arrives in few
/// completions; it costs nothing per connection, only per buffer.
pub(crate) const RECV_BUFFER_BYTES: usize = 64 << 10;
/// Buffers in a shard's receive ring (16 MiB of address space; pages
/// become resident only as the kernel first writes into them). A buffer
/// is lent from a receive's completion until that completion has been
/// handled, so this bounds how many receives can complete between two
/// reaps, not how many connections a shard holds: past it a receive
/// fails with `ENOBUFS` and is submitted again once buffers are back.
pub(crate) const RECV_BUFFERS: u16 = 256;
/// The provided-buffer group of the receive ring (one per ring).
const RECV_BUFFER_GROUP: u16 = 0;
/// Size of a `struct io_uring_buf`, one ring entry.
const BUF_RING_ENTRY_BYTES: usize = std::mem::size_of::<types::BufRingEntry>();

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): a
/// pool of receive buffers the kernel takes one from when data arrives
/// for a [`Ring::recv_select`], instead of each connection owning one
/// while it waits. A filled buffer is lent to the shard as a
/// [`LentBuf`] and goes back to the ring with [`BufRing::give_back`].
///
/// The ring's entries and the buffers live in anonymous mappings that are
/// never unmapped: the kernel may write into a buffer for a receive still
/// in flight when the shard stops, until the ring is torn down, which the
/// kernel finishes asynchronously after the descriptor is closed. A shard
/// makes one `BufRing` for its lifetime, so this is 16 MiB of address
/// space left to the process's exit.
pub(crate) struct BufRing {
    /// The ring's entries, page-aligned as the kernel requires; the tail
    /// is the `resv` field of the first entry.
    entries: *mut types::BufRingEntry,
    /// `RECV_BUFFERS` buffers of `RECV_BUFFER_BYTES`, one after another.
    buffers: *mut u8,
    /// The tail as published to the kernel (it wraps at `u16::MAX`).
    tail: u16,
}

/// A buffer the kernel filled, lent to the shard until it is given back.
/// Not `Clone`: giving it back consumes it, so no view of its bytes
/// outlives its return to the kernel.
pub(crate) struct LentBuf {
    ptr: *const u8,
    len: usize,
    bid: u16,
}

impl std::ops::Deref for LentBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points into the buffer `bid` of a `BufRing`, whose
        // mapping is never unmapped; the kernel wrote `len` bytes there
        // before posting the completion, and does not touch the buffer
        // again until `give_back` consumes this `LentBuf`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl BufRing {
    /// Maps the buffers and registers the ring with `ring`. Fails on a
    /// kernel older than 5.19 (`EINVAL`).
    pub fn new(ring: &Ring) -> io::Result<BufRing> {
        let entries = map_anonymous(usize::from(RECV_BUFFERS) * BUF_RING_ENTRY_BYTES)?;
        let buffers = map_anonymous(usize::from(RECV_BUFFERS) * RECV_BUFFER_BYTES)?;
        let mut bufs = BufRing {
            entries: entries.cast(),
            buffers,
            tail: 0,
        };
        // SAFETY: `entries` is a page-aligned mapping of `RECV_BUFFERS`
        // entries that stays mapped for the life of the process (above).
        unsafe {
            ring.ring.submitter().register_buf_ring_with_flags(
                entries as u64,
                RECV_BUFFERS,
                RECV_BUFFER_GROUP,
                0,
            )?;
        }
        for bid in 0..RECV_BUFFERS {
            bufs.push(bid);
        }
        bufs.publish();
        Ok(bufs)
    }

    /// The buffer `bid`, which the completion of a [`Ring::recv_select`]
    /// reported filled with `len` bytes. Call once per such completion.
    pub fn lend(&self, bid: u16, len: usize) -> LentBuf {
        assert!(
            bid < RECV_BUFFERS && len <= RECV_BUFFER_BYTES,
            "not a buffer of this ring"
        );
        LentBuf {
            // SAFETY: within the mapping of `buffers` (checked above).
            ptr: unsafe { self.buffers.add(usize::from(bid) * RECV_BUFFER_BYTES) },
            len,
            bid,
        }
    }

    /// Returns a buffer to the kernel for the next receive.
    pub fn give_back(&mut self, buf: LentBuf) {
        self.push(buf.bid);
        self.publish();
    }

    /// Writes the entry for `bid` at the tail (not yet visible).
    fn push(&mut self, bid: u16) {
        let index = usize::from(self.tail & (RECV_BUFFERS - 1));
        // SAFETY: `index` is within the ring's entries; the kernel reads
        // only entries before the published tail, and this one is past it.
        unsafe {
            let entry = &mut *self.entries.add(index);
            entry.set_addr(self.buffers.add(usize::from(bid) * RECV_BUFFER_BYTES) as u64);
            entry.set_len(RECV_BUFFER_BYTES as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the entries pushed so far visible to the kernel.
    fn publish(&mut self) {
        // SAFETY: the tail is the `u16` the kernel reads in the first entry
        // (aligned within the page-aligned mapping); the release store
        // orders the entries written before it.
        unsafe {
            let tail = types::BufRingEntry::tail(self.entries).cast_mut();
            std::sync::atomic::AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

// The ring size must be a power of two for the index mask in `push`.
const _: () = assert!(RECV_BUFFERS.is_power_of_two());

/// A private anonymous mapping of `len` bytes: page-aligned, zeroed, and
/// resident only where written.
fn map_anonymous(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

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
