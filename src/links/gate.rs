//! Direct writes: a plain (not TLS) client socket that its connection's task and a publisher
//! (a push, a broadcast) can both write, one whole WebSocket frame at a time.
//!
//! Why: handing a frame to the connection's task costs a task wake-up and a poll per connection
//! on the fan-out path, while the socket usually has room right now. A publisher that finds the
//! connection idle (nothing queued, nothing being written, the stream between two frames) writes
//! the pre-encoded frame itself with one non-blocking `write()`; otherwise it queues as before.
//!
//! The byte stream stays a sequence of whole frames because every write to the socket takes this
//! gate's lock, and a publisher writes only when the stream is between frames: not `dirty` (the
//! task's WebSocket layer has written part of a frame and holds the rest) and without a
//! `partial` (the unwritten end of a publisher's frame, which the task writes before anything
//! else: see [`GateStream`]). Order with queued messages is the link's part (nothing queued or
//! in flight, see `Link::send`).
//!
//! A frame written here is the plain server frame `links::encode` makes: right only while no
//! WebSocket extension is negotiated (wsgw offers none; permessage-deflate would change frames).
//!
//! Owns: the socket's write side and that state. Must never block: publishers only try
//! (`try_write`), and the task's writes wait for readiness like any socket's.

use std::{
    io::{self, Read},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, Interest, ReadBuf},
    net::TcpStream,
};

/// A plain client socket shared by its connection's task and publishers.
pub struct Gate {
    socket: TcpStream,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The task's WebSocket layer wrote part of a frame and holds the rest.
    dirty: bool,
    /// The unwritten end of a frame a publisher wrote in part; written before anything else.
    partial: Option<Bytes>,
}

/// What a publisher's attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Direct {
    /// The frame was written (wholly, or in part with the rest left to the task: wake it).
    Written { rest: bool },
    /// Not now (the stream is mid-frame, or the socket has no room): queue it.
    Busy,
}

impl Gate {
    pub fn new(socket: TcpStream) -> Arc<Self> {
        Arc::new(Self { socket, state: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain flags and bytes: a panic elsewhere leaves nothing half-done here.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `frame` (one whole encoded frame) now if the stream is between frames and the
    /// socket takes at least part of it. The caller has checked that nothing is queued before it.
    pub fn try_frame(&self, frame: &Bytes) -> Direct {
        let mut st = self.lock();
        if st.dirty || st.partial.is_some() {
            return Direct::Busy;
        }
        match self.socket.try_write(frame) {
            Ok(n) if n == frame.len() => Direct::Written { rest: false },
            Ok(n) if n > 0 => {
                st.partial = Some(frame.slice(n..));
                Direct::Written { rest: true }
            }
            // Nothing written (no room, or an error the task will meet on its next write).
            _ => Direct::Busy,
        }
    }

    /// Whether a publisher left the end of a frame for the task to write.
    pub fn has_partial(&self) -> bool {
        self.lock().partial.is_some()
    }

    /// Writes what a publisher left (if anything). Ready(Ok) once nothing is left.
    fn poll_partial(&self, st: &mut State, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(rest) = st.partial.as_mut() {
            match self.socket.try_write(rest) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) if n == rest.len() => st.partial = None,
                Ok(n) => {
                    let _ = rest.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    ready!(self.socket.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The connection task's side of a [`Gate`]: the socket as its WebSocket stream reads and
/// writes it.
pub struct GateStream(pub Arc<Gate>);

impl AsyncRead for GateStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let socket = &self.0.socket;
        loop {
            ready!(socket.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            let room = dst.len();
            let mut got = 0;
            // A read that fills less than the buffer has drained the socket (readiness is
            // edge-triggered): it is reported as `WouldBlock` to `try_io`, which then clears
            // the readiness it saw before the read (data arriving meanwhile sets it again), so
            // the next read waits for readiness instead of asking the kernel once more only to
            // hear `EAGAIN`. Tokio's own `TcpStream` reads do the same; `try_read` cannot,
            // and cost one `recvfrom` more per client message.
            let read = socket.try_io(Interest::READABLE, || {
                got = (&*socket2::SockRef::from(socket)).read(dst)?;
                match got > 0 && got < room {
                    true => Err(io::ErrorKind::WouldBlock.into()),
                    false => Ok(()),
                }
            });
            match read {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got == 0 => continue,
                Ok(()) | Err(_) if got > 0 => {
                    buf.advance(got);
                    return Poll::Ready(Ok(()));
                }
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for GateStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let gate = &self.0;
        let mut st = gate.lock();
        if let Err(e) = ready!(gate.poll_partial(&mut st, cx)) {
            return Poll::Ready(Err(e));
        }
        loop {
            match gate.socket.try_write(buf) {
                Ok(n) => {
                    // The WebSocket layer writes its whole buffer each time: anything short of
                    // it is the rest of a frame it still holds.
                    st.dirty = n < buf.len();
                    return Poll::Ready(Ok(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    st.dirty = !buf.is_empty();
                    ready!(gate.socket.poll_write_ready(cx))?;
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let gate = &self.0;
        let mut st = gate.lock();
        gate.poll_partial(&mut st, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        // Half-close the write side, as `TcpStream`'s own shutdown does.
        let socket = socket2::SockRef::from(&self.0.socket);
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write).or_else(|e| match e.kind() {
            io::ErrorKind::NotConnected => Ok(()),
            _ => Err(e),
        }))
    }
}

#[cfg(test)]
pub(super) mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A connected pair: (the server side's gate, the client side).
    pub(in crate::links) async fn pair() -> (Arc<Gate>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.expect("accept");
        (Gate::new(server), client.expect("connect"))
    }

    /// Reads everything the peer writes until it shuts its side down.
    fn read_to_end(mut client: TcpStream) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            let mut all = Vec::new();
            client.read_to_end(&mut all).await.expect("read");
            all
        })
    }

    /// Bytes no loopback socket pair buffers whole (send and receive buffers are a few MiB).
    fn big(byte: u8) -> Bytes {
        Bytes::from(vec![byte; 32 << 20])
    }

    #[tokio::test]
    async fn a_read_that_drains_the_socket_waits_for_the_next_bytes_and_gets_them() {
        use std::time::Duration;
        let (gate, mut client) = pair().await;
        let mut task = GateStream(gate);
        let mut buf = [0u8; 64];
        client.write_all(b"hello").await.expect("write");
        assert_eq!(task.read(&mut buf).await.expect("read"), 5);
        let idle = tokio::time::timeout(Duration::from_millis(50), task.read(&mut buf)).await;
        assert!(idle.is_err(), "nothing more was sent");
        // The readiness cleared after the short read comes back with the next bytes.
        client.write_all(b"world!").await.expect("write");
        let wait = tokio::time::timeout(Duration::from_secs(5), task.read(&mut buf));
        let n = wait.await.expect("woken by the new bytes").expect("read");
        assert_eq!(&buf[..n], b"world!");
        // A read that fills the buffer keeps the readiness: the rest follows.
        client.write_all(&[7u8; 100]).await.expect("write");
        let mut got = 0;
        while got < 100 {
            let n = task.read(&mut buf).await.expect("read");
            assert!(n > 0 && buf[..n].iter().all(|&b| b == 7));
            got += n;
        }
        drop(client);
        assert_eq!(task.read(&mut buf).await.expect("end of stream"), 0);
    }

    #[tokio::test]
    async fn the_end_of_a_frame_written_in_part_goes_out_before_the_tasks_next_bytes() {
        let (gate, client) = pair().await;
        let frame = big(b'f');
        assert_eq!(
            gate.try_frame(&frame),
            Direct::Written { rest: true },
            "the peer reads nothing yet"
        );
        assert!(gate.has_partial());
        assert_eq!(gate.try_frame(&Bytes::from_static(b"x")), Direct::Busy, "mid-frame: queue");

        let reader = read_to_end(client);
        let mut task = GateStream(gate.clone());
        task.write_all(b"after").await.expect("write");
        task.shutdown().await.expect("shutdown");
        assert!(!gate.has_partial());
        let all = reader.await.expect("reader");
        assert_eq!(all.len(), frame.len() + 5);
        assert!(all[..frame.len()].iter().all(|&b| b == b'f'), "the frame, whole and first");
        assert_eq!(&all[frame.len()..], b"after");
    }

    #[tokio::test]
    async fn publishers_wait_while_the_task_holds_the_rest_of_a_frame() {
        let (gate, mut client) = pair().await;
        let mut task = GateStream(gate.clone());
        let held = big(b't');
        // The task's WebSocket layer writes its buffer; the socket takes only part of it.
        let n = task.write(&held).await.expect("write");
        assert!(n < held.len(), "wrote {n}");
        assert_eq!(gate.try_frame(&Bytes::from_static(b"p")), Direct::Busy, "dirty: queue");

        // Once the task has written the rest, the stream is between frames again.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 1 << 16];
            let mut got = 0;
            while got < 32 << 20 {
                got += client.read(&mut buf).await.expect("read");
            }
            client
        });
        task.write_all(&held[n..]).await.expect("the rest");
        let mut client = drain.await.expect("drain");
        assert_eq!(gate.try_frame(&Bytes::from_static(b"p")), Direct::Written { rest: false });
        let mut p = [0u8; 1];
        client.read_exact(&mut p).await.expect("read");
        assert_eq!(&p, b"p");
    }
}
