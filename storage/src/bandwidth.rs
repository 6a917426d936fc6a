//! A bandwidth limit shared by every copy of a migration.
//!
//! Each transfer reserves its bytes on a shared virtual clock that advances by
//! `bytes / rate`; a reader that got ahead of the clock waits before its next read.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// At most `bytes_per_second` on average across everyone holding a clone.
#[derive(Clone, Debug)]
pub struct BandwidthLimit {
    bytes_per_second: u64,
    next_free: Arc<Mutex<Option<Instant>>>,
}

impl BandwidthLimit {
    /// A limit of `bytes_per_second` (at least 1).
    pub fn new(bytes_per_second: u64) -> Self {
        BandwidthLimit {
            bytes_per_second: bytes_per_second.max(1),
            next_free: Arc::new(Mutex::new(None)),
        }
    }

    /// Account for `bytes` moved now; returns when the next bytes may move.
    pub fn reserve(&self, bytes: u64) -> Instant {
        let now = Instant::now();
        let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
        let start = next.map_or(now, |n| n.max(now));
        let end = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        *next = Some(end);
        end
    }

    /// Wait until `bytes` moved in one piece (e.g. a server-side copy) fit the limit.
    pub async fn wait_for(&self, bytes: u64) {
        tokio::time::sleep_until(self.reserve(bytes)).await;
    }

    /// `reader`, slowed to this limit.
    pub fn throttle<R: AsyncRead>(&self, reader: R) -> Throttled<R> {
        Throttled {
            inner: reader,
            limit: self.clone(),
            pause: None,
        }
    }
}

/// A reader held to a [`BandwidthLimit`].
pub struct Throttled<R> {
    inner: R,
    limit: BandwidthLimit,
    pause: Option<Pin<Box<Sleep>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Throttled<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if let Some(pause) = this.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            this.pause = None;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let read = (buf.filled().len() - before) as u64;
        if read > 0 {
            let until = this.limit.reserve(read);
            if until > Instant::now() {
                this.pause = Some(Box::pin(tokio::time::sleep_until(until)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_advance_a_shared_clock_by_bytes_over_rate() {
        let limit = BandwidthLimit::new(1000);
        let other = limit.clone();
        let first = limit.reserve(500);
        let second = other.reserve(1500);
        // The clone shares the clock: 2000 bytes at 1000 B/s end two seconds after the start.
        assert_eq!(second - first, Duration::from_millis(1500));
        assert!(first >= Instant::now() + Duration::from_millis(400));
    }

    #[tokio::test]
    async fn throttled_readers_pass_every_byte_through() {
        use tokio::io::AsyncReadExt;
        let limit = BandwidthLimit::new(u64::MAX);
        let mut out = Vec::new();
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        limit
            .throttle(&data[..])
            .read_to_end(&mut out)
            .await
            .unwrap();
        assert_eq!(out, data);
    }
}
