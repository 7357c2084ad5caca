//! Counts the whole HTTP/1.1 requests in the bytes read from a connection.
//!
//! hyper parses and answers the requests; this only finds where each one
//! ends (head, then `Content-Length` or chunked body) so the connection task
//! knows how many requests it has read. At the per-connection request cap it
//! stops reading, answers every request already read (a pipelining client
//! may have sent many past the cap) and marks the reply to the last one
//! `Connection: close`: no request that was read goes unanswered.
//!
//! A stream it cannot frame (bad head, too long a line) stops the count;
//! hyper answers such a request with 400 and closes anyway.

/// Longest head, chunk-size line or trailer section held while incomplete.
const MAX_PENDING: usize = 64 * 1024;
/// Most headers looked at in one head (hyper refuses more than its own cap).
const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    /// The CRLF after a chunk's data (bytes of it left).
    ChunkEnd(u8),
    Trailers,
    /// Framing lost; nothing more is counted.
    Broken,
}

/// What one framing step did with the input.
enum Step {
    /// Used this many bytes (state may have changed).
    Used(usize),
    /// Needs more bytes than there are.
    More,
}

/// Counts complete requests in a byte stream fed in read order.
#[derive(Debug)]
pub struct RequestCounter {
    state: State,
    /// Unconsumed bytes of an incomplete head / chunk-size line / trailers.
    pending: Vec<u8>,
    complete: u64,
}

impl Default for RequestCounter {
    fn default() -> Self {
        Self {
            state: State::Head,
            pending: Vec::new(),
            complete: 0,
        }
    }
}

impl RequestCounter {
    /// Whole requests seen so far.
    pub fn complete(&self) -> u64 {
        self.complete
    }

    /// Whether the stream could not be framed (the count stopped).
    #[cfg(test)]
    pub fn broken(&self) -> bool {
        self.state == State::Broken
    }

    /// Feeds the next bytes read from the connection.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.state != State::Broken {
            if self.pending.is_empty() {
                // Fast path: frame straight from the input.
                match self.step(data) {
                    Step::Used(n) => data = &data[n..],
                    Step::More => {
                        self.hold(data);
                        return;
                    }
                }
            } else {
                self.pending.extend_from_slice(data);
                data = &[];
                let pending = std::mem::take(&mut self.pending);
                let mut at = 0;
                while at < pending.len() && self.state != State::Broken {
                    match self.step(&pending[at..]) {
                        Step::Used(n) => at += n,
                        Step::More => break,
                    }
                }
                self.hold(&pending[at..]);
            }
        }
    }

    fn hold(&mut self, rest: &[u8]) {
        if rest.len() > MAX_PENDING {
            self.state = State::Broken;
            self.pending = Vec::new();
        } else {
            self.pending.extend_from_slice(rest);
        }
    }

    fn finish_request(&mut self) {
        self.complete += 1;
        self.state = State::Head;
    }

    fn step(&mut self, input: &[u8]) -> Step {
        match self.state {
            State::Broken => Step::Used(input.len()),
            State::Body(left) | State::ChunkData(left) => {
                let n = (input.len() as u64).min(left);
                let left = left - n;
                self.state = match (self.state, left) {
                    (State::Body(_), 0) => {
                        self.finish_request();
                        State::Head
                    }
                    (State::Body(_), _) => State::Body(left),
                    (_, 0) => State::ChunkEnd(2),
                    _ => State::ChunkData(left),
                };
                Step::Used(n as usize)
            }
            State::ChunkEnd(left) => {
                let n = input.len().min(left as usize);
                let left = left - n as u8;
                self.state = if left == 0 {
                    State::ChunkSize
                } else {
                    State::ChunkEnd(left)
                };
                Step::Used(n)
            }
            State::Head => self.head(input),
            State::ChunkSize => match httparse::parse_chunk_size(input) {
                Ok(httparse::Status::Complete((n, 0))) => {
                    self.state = State::Trailers;
                    Step::Used(n)
                }
                Ok(httparse::Status::Complete((n, size))) => {
                    self.state = State::ChunkData(size);
                    Step::Used(n)
                }
                Ok(httparse::Status::Partial) => Step::More,
                Err(_) => {
                    self.state = State::Broken;
                    Step::Used(input.len())
                }
            },
            State::Trailers => match input.windows(2).position(|w| w == b"\r\n") {
                // An empty line ends the trailers and the request.
                Some(0) => {
                    self.finish_request();
                    Step::Used(2)
                }
                Some(i) => Step::Used(i + 2),
                None => Step::More,
            },
        }
    }

    fn head(&mut self, input: &[u8]) -> Step {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let used = match req.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Step::More,
            Err(_) => {
                self.state = State::Broken;
                return Step::Used(input.len());
            }
        };
        let mut chunked = false;
        let mut length: Option<u64> = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // The last coding decides (RFC 9112 §6.3).
                chunked = std::str::from_utf8(h.value).is_ok_and(|v| {
                    v.rsplit(',')
                        .next()
                        .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"))
                });
            } else if h.name.eq_ignore_ascii_case("content-length") {
                match std::str::from_utf8(h.value)
                    .ok()
                    .and_then(content_length)
                    .filter(|n| length.is_none_or(|l| l == *n))
                {
                    Some(n) => length = Some(n),
                    None => {
                        self.state = State::Broken;
                        return Step::Used(input.len());
                    }
                }
            }
        }
        match (chunked, length) {
            (true, _) => self.state = State::ChunkSize,
            (false, Some(n)) if n > 0 => self.state = State::Body(n),
            _ => self.finish_request(),
        }
        Step::Used(used)
    }
}

/// A Content-Length value as hyper reads it: digits only, or a list of equal
/// values (`5, 5`, RFC 9110 §8.6); anything else is a bad request.
fn content_length(v: &str) -> Option<u64> {
    let mut n = None;
    for part in v.split(',').map(str::trim) {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let m: u64 = part.parse().ok()?;
        if n.is_some_and(|n| n != m) {
            return None;
        }
        n = Some(m);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_values() {
        assert_eq!(content_length("5"), Some(5));
        assert_eq!(content_length(" 5 , 5"), Some(5));
        assert_eq!(content_length("5, 6"), None);
        assert_eq!(content_length("+5"), None);
        assert_eq!(content_length(""), None);
        assert_eq!(content_length("5,"), None);
    }

    const STREAM: &[u8] = b"POST /goim/push/room?operation=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
GET /health HTTP/1.1\r\nHost: x\r\n\r\n\
POST /goim/push/all?operation=1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n\
POST /goim/push/keys?operation=1&keys=a HTTP/1.1\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn counts_requests_of_every_framing_however_split() {
        for chunk in [1, 2, 3, 7, 64, STREAM.len()] {
            let mut c = RequestCounter::default();
            let mut seen = Vec::new();
            for part in STREAM.chunks(chunk) {
                c.feed(part);
                seen.push(c.complete());
            }
            assert_eq!(c.complete(), 4, "chunks of {chunk}");
            assert!(!c.broken());
            assert!(seen.windows(2).all(|w| w[0] <= w[1]));
        }
    }

    #[test]
    fn a_request_counts_only_once_its_body_is_whole() {
        let mut c = RequestCounter::default();
        c.feed(b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab");
        assert_eq!(c.complete(), 0);
        c.feed(b"cd");
        assert_eq!(c.complete(), 1);
        c.feed(b"GET / HTTP/1.1\r\n");
        assert_eq!(c.complete(), 1);
        c.feed(b"\r\n");
        assert_eq!(c.complete(), 2);
    }

    #[test]
    fn garbage_stops_the_count() {
        let mut c = RequestCounter::default();
        c.feed(b"\x16\x03\x01 not http\r\n\r\nGET / HTTP/1.1\r\n\r\n");
        assert!(c.broken());
        assert_eq!(c.complete(), 0);
        let mut c = RequestCounter::default();
        c.feed(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n");
        assert!(c.broken());
        let mut c = RequestCounter::default();
        c.feed(&vec![b'a'; MAX_PENDING + 1]);
        assert!(c.broken());
    }
}
