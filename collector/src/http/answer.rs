//! Answers written as a stream of chunks built while the client reads, so
//! that a large answer is never held twice in memory (its rows and their
//! text), and stored log lines are copied into the answer as they are,
//! without being parsed again.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use http_body::Frame;

/// Target size of one chunk.
pub const CHUNK_BYTES: usize = 64 << 10;

/// A body whose chunks come from an iterator.
struct IterBody<I>(I);

impl<I> http_body::Body for IterBody<I>
where
    I: Iterator<Item = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().0.next().map(|b| Ok(Frame::data(b))))
    }
}

/// Writes `head`, then every item (separated by commas) with `write`, then
/// `tail`, as chunks of about [`CHUNK_BYTES`]. Each item is dropped once
/// written, so the items and their text are never both held whole. Called
/// on a query thread: the async workers then only copy chunks to sockets.
pub fn json_list<T, F>(head: String, items: Vec<T>, tail: String, write: F) -> Vec<Bytes>
where
    F: FnMut(&mut Vec<u8>, T),
{
    ListChunks {
        head: Some(head),
        items: items.into_iter(),
        tail: Some(tail),
        write,
        first: true,
    }
    .collect()
}

/// A body of chunks made beforehand.
pub fn chunks_body(chunks: Vec<Bytes>) -> Body {
    Body::new(IterBody(chunks.into_iter()))
}

struct ListChunks<T, F> {
    head: Option<String>,
    items: std::vec::IntoIter<T>,
    tail: Option<String>,
    write: F,
    first: bool,
}

impl<T, F> Unpin for ListChunks<T, F> {}

impl<T, F: FnMut(&mut Vec<u8>, T)> Iterator for ListChunks<T, F> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let mut buf = Vec::with_capacity(CHUNK_BYTES + 4096);
        if let Some(h) = self.head.take() {
            buf.extend_from_slice(h.as_bytes());
        }
        while buf.len() < CHUNK_BYTES {
            match self.items.next() {
                Some(item) => {
                    if !self.first {
                        buf.push(b',');
                    }
                    self.first = false;
                    (self.write)(&mut buf, item);
                }
                None => {
                    if let Some(t) = self.tail.take() {
                        buf.extend_from_slice(t.as_bytes());
                    }
                    break;
                }
            }
        }
        (!buf.is_empty()).then(|| Bytes::from(buf))
    }
}

/// A text answer from an iterator of pieces, sent in chunks.
pub fn text_chunks<I>(pieces: I) -> Body
where
    I: Iterator<Item = String> + Send + Unpin + 'static,
{
    Body::new(IterBody(TextChunks { pieces }))
}

struct TextChunks<I> {
    pieces: I,
}

impl<I: Iterator<Item = String>> Iterator for TextChunks<I> {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let mut buf = String::with_capacity(CHUNK_BYTES + 1024);
        for p in self.pieces.by_ref() {
            buf.push_str(&p);
            if buf.len() >= CHUNK_BYTES {
                break;
            }
        }
        (!buf.is_empty()).then(|| Bytes::from(buf))
    }
}

/// Appends `v` as a JSON string.
pub fn push_json_str(buf: &mut Vec<u8>, v: &str) {
    // Writing a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *buf, v);
}

/// Appends a stored line (compact JSON written by the store) as a JSON
/// value without parsing it; anything that does not look like an object
/// is written as `null`.
pub fn push_raw_line(buf: &mut Vec<u8>, line: &[u8]) {
    if line.first() == Some(&b'{')
        && line.last() == Some(&b'}')
        && std::str::from_utf8(line).is_ok()
    {
        buf.extend_from_slice(line);
    } else {
        buf.extend_from_slice(b"null");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(mut it: impl Iterator<Item = Bytes>) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut n = 0;
        for b in it.by_ref() {
            out.extend_from_slice(&b);
            n += 1;
        }
        (out, n)
    }

    #[test]
    fn json_list_writes_valid_json_in_several_chunks() {
        let items: Vec<u32> = (0..20_000).collect();
        let it = ListChunks {
            head: Some("{\"a\":[".into()),
            items: items.into_iter(),
            tail: Some("],\"n\":1}".into()),
            write: |b: &mut Vec<u8>, i: u32| {
                b.extend_from_slice(format!("{{\"i\":{i}}}").as_bytes())
            },
            first: true,
        };
        let (out, chunks) = collect(it);
        assert!(chunks > 2, "{chunks} chunks");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["a"].as_array().map(Vec::len), Some(20_000));
        let empty = ListChunks {
            head: Some("[".into()),
            items: Vec::<u32>::new().into_iter(),
            tail: Some("]".into()),
            write: |_: &mut Vec<u8>, _: u32| {},
            first: true,
        };
        assert_eq!(collect(empty).0, b"[]");
    }

    #[test]
    fn raw_lines_are_copied_and_strings_escaped() {
        let mut b = Vec::new();
        push_raw_line(&mut b, br#"{"x":1}"#);
        b.push(b',');
        push_raw_line(&mut b, b"\xff garbage");
        b.push(b',');
        push_json_str(&mut b, "a\"b\n");
        assert_eq!(
            String::from_utf8(b).expect("utf8"),
            r#"{"x":1},null,"a\"b\n""#
        );
    }
}
