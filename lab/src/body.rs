//! The one HTTP body type of the lab's apps and clients: a small buffer, or
//! a stretch of the deterministic pattern streamed chunk by chunk (so a
//! 100 MiB body never sits in memory).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::pattern;

#[derive(Debug)]
pub enum LabBody {
    /// A whole body; `None` once sent.
    Full(Option<Bytes>),
    /// Pattern bytes `offset..end`. With `exact`, the length is announced
    /// (Content-Length); without, HTTP/1.1 sends it chunked.
    Pattern { offset: u64, end: u64, exact: bool },
}

impl LabBody {
    pub fn empty() -> LabBody {
        LabBody::Full(None)
    }

    pub fn full(bytes: impl Into<Bytes>) -> LabBody {
        let bytes = bytes.into();
        if bytes.is_empty() {
            LabBody::Full(None)
        } else {
            LabBody::Full(Some(bytes))
        }
    }

    /// The first `len` bytes of the pattern.
    pub fn pattern(len: u64, exact: bool) -> LabBody {
        LabBody::Pattern {
            offset: 0,
            end: len,
            exact,
        }
    }
}

impl Body for LabBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let frame = match self.get_mut() {
            LabBody::Full(bytes) => bytes.take().map(Frame::data),
            LabBody::Pattern { offset, end, .. } => {
                if *offset >= *end {
                    None
                } else {
                    let max = usize::try_from(*end - *offset).unwrap_or(pattern::CHUNK);
                    let data = pattern::chunk(*offset, max);
                    *offset += data.len() as u64;
                    Some(Frame::data(data))
                }
            }
        };
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            LabBody::Full(bytes) => bytes.is_none(),
            LabBody::Pattern { offset, end, .. } => offset >= end,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LabBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            LabBody::Pattern {
                offset,
                end,
                exact: true,
            } => SizeHint::with_exact(end.saturating_sub(*offset)),
            LabBody::Pattern { .. } => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn pattern_body_streams_the_pattern_in_chunks() {
        let len = 3 * pattern::CHUNK as u64 + 5;
        let body = LabBody::pattern(len, true);
        assert_eq!(body.size_hint().exact(), Some(len));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(all.len() as u64, len);
        assert_eq!(&all[..], &pattern::pattern(len as usize)[..]);

        let chunked = LabBody::pattern(10, false);
        assert_eq!(chunked.size_hint().exact(), None);
        assert!(LabBody::pattern(0, false).is_end_stream());
        assert!(LabBody::empty().is_end_stream());
        assert!(LabBody::full(Bytes::new()).is_end_stream());
        let b = LabBody::full("abc").collect().await.unwrap().to_bytes();
        assert_eq!(&b[..], b"abc");
    }
}
