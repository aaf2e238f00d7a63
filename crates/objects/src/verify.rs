//! A read stream that checks an object's digest as its bytes flow past.
//!
//! Objects can be far larger than memory (model weights, datasets), so reads cannot buffer the
//! whole object before checking its hash. Instead the hash is computed incrementally and a
//! `Corrupt` error is yielded as the final item when it does not match: a consumer that reads
//! the stream to the end either sees every byte verified or sees an error, never silently bad
//! data. Consumers must therefore treat the data as untrusted until the stream has ended.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::stream::{BoxStream, Stream, StreamExt};
use sha2::{Digest as _, Sha256};

use crate::digest::ObjectDigest;
use crate::error::{ObjectError, Result};

/// Stream of an object's bytes that ends with a `Corrupt` error if the content does not hash to
/// the digest it was opened by.
pub struct VerifiedStream {
    inner: BoxStream<'static, object_store::Result<Bytes>>,
    expected: ObjectDigest,
    size: u64,
    // None once the stream has finished (successfully or not), so nothing is yielded after the
    // verdict
    hasher: Option<Sha256>,
}

impl VerifiedStream {
    pub(crate) fn new(
        inner: BoxStream<'static, object_store::Result<Bytes>>,
        expected: ObjectDigest,
        size: u64,
    ) -> Self {
        Self { inner, expected, size, hasher: Some(Sha256::new()) }
    }

    /// The object's size as reported by the backend when the stream was opened, useful for a
    /// Content-Length header before any byte is read.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest the stream is verified against.
    pub fn digest(&self) -> ObjectDigest {
        self.expected
    }
}

impl Stream for VerifiedStream {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Every field is Unpin, so the stream can be handled through a plain mutable reference
        let this = self.get_mut();
        let Some(hasher) = this.hasher.as_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                hasher.update(&chunk);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.hasher = None;
                Poll::Ready(Some(Err(ObjectError::backend("read", Some(&this.expected), err))))
            }
            Poll::Ready(None) => {
                let Some(hasher) = this.hasher.take() else {
                    return Poll::Ready(None);
                };
                let actual = ObjectDigest::from_hasher(hasher);
                if actual == this.expected {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Err(ObjectError::corrupt(&this.expected, &actual))))
                }
            }
        }
    }
}

impl std::fmt::Debug for VerifiedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedStream")
            .field("expected", &self.expected)
            .field("size", &self.size)
            .field("finished", &self.hasher.is_none())
            .finish_non_exhaustive()
    }
}
