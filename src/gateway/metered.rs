//! A client's socket, read within a byte rate (`limits.read_rate`, `limits.read_burst`): a token
//! bucket over the bytes read. Beyond it the node stops reading that socket until the bucket has
//! refilled; the kernel's buffers fill and TCP slows the client down. Nothing is dropped or
//! closed, and other connections never notice.
//!
//! It bounds what no message limit sees, because the WebSocket layer only hands over whole
//! messages: a message made of endless empty continuation frames, control frames, TLS records
//! and the upgrade request all cost the node CPU per byte.
//!
//! A read is not cut to the bucket: one may overdraw it by up to the reader's buffer (512 bytes
//! for plain WebSocket reads, a TLS record for `wss://`), and the next read waits until that is
//! repaid, so the average rate holds.
//!
//! Owns: one connection's bucket (24 bytes beside the socket; the timer is allocated only when
//! the connection first has to wait). Must never buffer or reorder bytes, and never touch writes.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use prometheus::IntCounter;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep, sleep_until},
};

/// The node's byte-rate settings, shared by its connections.
pub struct ReadRate {
    /// Bytes per second; 0: no limit.
    per_second: u32,
    burst: u32,
    epoch: Instant,
    /// Times a connection had to wait for its bucket.
    throttled: IntCounter,
}

impl ReadRate {
    /// `per_second` 0 turns the limit off. `burst` is raised to at least one second's worth.
    pub fn new(per_second: u64, burst: u64, throttled: IntCounter) -> Arc<Self> {
        let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let per_second = clamp(per_second);
        let burst = clamp(burst).max(per_second);
        Arc::new(Self { per_second, burst, epoch: Instant::now(), throttled })
    }

    /// Milliseconds since the node started, wrapping (only differences are used).
    fn now_ms(&self) -> u32 {
        self.epoch.elapsed().as_millis() as u32
    }
}

/// A socket whose reads are paced by a [`ReadRate`].
pub struct Metered<S> {
    inner: S,
    rate: Arc<ReadRate>,
    /// Bytes that may still be read before refilling; negative after a read overdraws it.
    tokens: i32,
    /// When the bucket was last refilled ([`ReadRate::now_ms`]).
    refilled_ms: u32,
    wait: Option<Pin<Box<Sleep>>>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, rate: Arc<ReadRate>) -> Self {
        let tokens = i32::try_from(rate.burst).unwrap_or(i32::MAX);
        let refilled_ms = rate.now_ms();
        Self { inner, rate, tokens, refilled_ms, wait: None }
    }

    /// The socket read through this.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Adds what the time since the last refill earned (up to the burst). Returns how long to
    /// wait when the bucket is still empty.
    fn refill(&mut self) -> Option<Duration> {
        let per_second = u64::from(self.rate.per_second);
        let now = self.rate.now_ms();
        let earned = u64::from(now.wrapping_sub(self.refilled_ms)) * per_second / 1000;
        if earned > 0 {
            let tokens = (i64::from(self.tokens) + earned as i64).min(i64::from(self.rate.burst));
            self.tokens = i32::try_from(tokens).unwrap_or(i32::MAX);
            self.refilled_ms = now;
        }
        if self.tokens > 0 {
            return None;
        }
        let missing = (1 - i64::from(self.tokens)) as u64;
        Some(Duration::from_millis((missing * 1000).div_ceil(per_second).max(1)))
    }

    /// Ready when the bucket has bytes to spend; otherwise waits (registering `cx`).
    fn poll_budget(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while self.tokens <= 0 {
            if let Some(wait) = &mut self.wait
                && !wait.is_elapsed()
            {
                ready!(wait.as_mut().poll(cx));
            }
            let Some(after) = self.refill() else { break };
            self.rate.throttled.inc();
            let until = Instant::now() + after;
            match &mut self.wait {
                Some(wait) => wait.as_mut().reset(until),
                None => self.wait = Some(Box::pin(sleep_until(until))),
            }
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rate.per_second == 0 {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        ready!(this.poll_budget(cx));
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = i32::try_from(buf.filled().len() - before).unwrap_or(i32::MAX);
        this.tokens = this.tokens.saturating_sub(read);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").expect("counter")
    }

    /// Reads `total` bytes written at once through a bucket of `rate`/s with `burst`; returns
    /// the (paused-clock) time it took.
    async fn read_all(total: usize, rate: u64, burst: u64) -> (Duration, u64) {
        let (mut tx, rx) = tokio::io::duplex(total);
        tx.write_all(&vec![0u8; total]).await.expect("write");
        drop(tx);
        let throttled = counter();
        let mut metered = Metered::new(rx, ReadRate::new(rate, burst, throttled.clone()));
        let started = Instant::now();
        let (mut got, mut chunk) = (0, [0u8; 512]);
        loop {
            match metered.read(&mut chunk).await.expect("read") {
                0 => break,
                n => got += n,
            }
        }
        assert_eq!(got, total, "every byte arrives");
        (started.elapsed(), throttled.get())
    }

    #[tokio::test(start_paused = true)]
    async fn reads_beyond_the_burst_are_paced_at_the_rate() {
        // 100 KiB through 10 KiB/s with a 20 KiB burst: the first 20 KiB at once, then ~8 s
        let (took, throttled) = read_all(100 * 1024, 10 * 1024, 20 * 1024).await;
        assert!(took >= Duration::from_millis(7_500), "{took:?}");
        assert!(took <= Duration::from_millis(9_000), "{took:?}");
        assert!(throttled > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn within_the_burst_nothing_waits_and_zero_is_no_limit() {
        let (took, throttled) = read_all(16 * 1024, 1024, 32 * 1024).await;
        assert_eq!((took, throttled), (Duration::ZERO, 0));
        let (took, throttled) = read_all(1 << 20, 0, 0).await;
        assert_eq!((took, throttled), (Duration::ZERO, 0));
    }

    #[test]
    fn the_burst_is_at_least_a_second_of_the_rate() {
        let rate = ReadRate::new(1000, 10, counter());
        assert_eq!(rate.burst, 1000);
    }
}
