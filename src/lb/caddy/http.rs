//! Just enough HTTP/1.1 to talk to Caddy's admin API, as bytes: the request
//! shipit writes and the response it reads back, whether over its own TCP
//! connection or relayed through a host ([`super::admin`]). No I/O here.
//!
//! Why not an HTTP client crate: Caddy sends the `ETag` of a config read as
//! an HTTP *trailer* (after a chunked body), and the optimistic concurrency
//! shipit relies on needs it; reqwest has no way to read trailers, and on a
//! relay host the bytes come back through SSH anyway. Every request asks
//! for `Connection: close`, so a response ends where the stream ends.

use std::fmt;

/// One request to the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// `/id/shop/upstreams`, `/reverse_proxy/upstreams`… (only characters
    /// that need no escaping in a URL path; callers check names).
    pub path: String,
    /// An ETag from an earlier read: the change happens only if the config
    /// at the ETag's path is still what was read.
    pub if_match: Option<String>,
    /// A JSON body (POST, PATCH).
    pub body: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

impl Request {
    pub fn get(path: impl Into<String>) -> Request {
        Request {
            method: Method::Get,
            path: path.into(),
            if_match: None,
            body: None,
        }
    }

    /// The bytes on the wire. `host` is the Host header: the admin address
    /// as configured, which Caddy checks against its allowed origins.
    pub fn to_bytes(&self, host: &str) -> Vec<u8> {
        let mut head = format!(
            "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: shipit/{}\r\nConnection: close\r\n",
            self.method.as_str(),
            self.path,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(etag) = &self.if_match {
            head.push_str(&format!("If-Match: {etag}\r\n"));
        }
        let body = self.body.as_deref().unwrap_or_default();
        if self.body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if self.body.is_some() || self.method != Method::Get {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

impl fmt::Display for Request {
    /// `DELETE /id/shop/upstreams/1`, as logs and errors show it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.method.as_str(), self.path)
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The `ETag` header or trailer, quotes included.
    pub etag: Option<String>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Parses a complete response (the stream up to where the server closed
/// it): a `Content-Length` body, a chunked body with its trailers, or
/// everything to the end.
pub fn parse_response(raw: &[u8]) -> Result<Response, String> {
    if raw.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Err("the answer ended inside its headers".into());
        }
        Err(e) => return Err(format!("not an HTTP answer ({e}): {}", preview(raw))),
    };
    let status = response.code.unwrap_or_default();
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let mut etag = header("etag");
    let rest = &raw[head_len..];
    let chunked =
        header("transfer-encoding").is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        let (body, trailer_etag) = dechunk(rest)?;
        etag = trailer_etag.or(etag);
        body
    } else if let Some(length) = header("content-length") {
        let length: usize = length
            .parse()
            .map_err(|_| format!("bad Content-Length {length:?}"))?;
        if rest.len() < length {
            return Err(format!(
                "the answer ended after {} of {length} body bytes",
                rest.len()
            ));
        }
        rest[..length].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response { status, body, etag })
}

/// A chunked body: the data and the `ETag` trailer, if sent.
fn dechunk(mut rest: &[u8]) -> Result<(Vec<u8>, Option<String>), String> {
    let mut body = Vec::new();
    loop {
        let (consumed, size) = match httparse::parse_chunk_size(rest) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Err("the answer ended inside its body".into()),
            Err(_) => return Err("bad chunk in the answer's body".into()),
        };
        rest = &rest[consumed..];
        if size == 0 {
            break;
        }
        let size = usize::try_from(size).map_err(|_| "chunk too large".to_string())?;
        if rest.len() < size + 2 {
            return Err("the answer ended inside its body".into());
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    // Trailers: header lines, then an empty line.
    let mut trailers = [httparse::EMPTY_HEADER; 16];
    let etag = match httparse::parse_headers(rest, &mut trailers) {
        Ok(httparse::Status::Complete((_, found))) => found
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("etag"))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string()),
        // A stream cut right after the last chunk still carried the body.
        Ok(httparse::Status::Partial) | Err(_) => None,
    };
    Ok((body, etag))
}

/// The start of an unexpected answer, for error messages.
fn preview(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(&raw[..raw.len().min(120)]);
    format!("{:?}", text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_http_1_1_with_connection_close() {
        let get = Request::get("/id/shop");
        assert_eq!(get.to_string(), "GET /id/shop");
        let text = String::from_utf8(get.to_bytes("localhost:2019")).unwrap();
        assert!(
            text.starts_with(
                "GET /id/shop HTTP/1.1\r\nHost: localhost:2019\r\nUser-Agent: shipit/"
            )
        );
        assert!(text.ends_with("Connection: close\r\n\r\n"), "{text}");
        assert!(!text.contains("Content-Length"));

        let post = Request {
            method: Method::Post,
            path: "/id/shop/upstreams".into(),
            if_match: Some("\"/config/apps x 1a2b\"".into()),
            body: Some("{\"dial\":\"10.0.0.1:80\"}".into()),
        };
        let text = String::from_utf8(post.to_bytes("[::1]:2019")).unwrap();
        assert!(text.contains("\r\nHost: [::1]:2019\r\n"));
        assert!(text.contains("\r\nIf-Match: \"/config/apps x 1a2b\"\r\n"));
        assert!(
            text.contains(
                "\r\nContent-Type: application/json\r\nContent-Length: 22\r\n\r\n{\"dial\""
            )
        );

        let delete = Request {
            method: Method::Delete,
            path: "/id/shop/upstreams/2".into(),
            if_match: None,
            body: None,
        };
        let text = String::from_utf8(delete.to_bytes("h:1")).unwrap();
        assert!(text.ends_with("Content-Length: 0\r\n\r\n"), "{text}");
    }

    /// Captured from Caddy 2.6.2: `GET /id/app/upstreams`.
    const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTrailer: ETag\r\nDate: Wed, 02 Dec 2026 08:39:04 GMT\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n1d\r\n[{\"dial\":\"127.0.0.1:18081\"}]\n\r\n0\r\nEtag: \"/config/apps/http/servers/app/routes/0/handle/0/upstreams ad45e95a\"\r\n\r\n";

    #[test]
    fn a_chunked_answer_and_its_etag_trailer() {
        let r = parse_response(CHUNKED).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "[{\"dial\":\"127.0.0.1:18081\"}]\n");
        assert_eq!(
            r.etag.as_deref(),
            Some("\"/config/apps/http/servers/app/routes/0/handle/0/upstreams ad45e95a\"")
        );
        // Cut after the last chunk: the body is there, the ETag is not.
        let text = String::from_utf8_lossy(CHUNKED);
        let last = text.find("0\r\nEtag").unwrap() + 3;
        let r = parse_response(&CHUNKED[..last]).unwrap();
        assert_eq!((r.text().len(), r.etag), (29, None));
        // Cut inside the body.
        let inside = text.find("18081").unwrap();
        assert_eq!(
            parse_response(&CHUNKED[..inside]),
            Err("the answer ended inside its body".into())
        );
    }

    #[test]
    fn length_and_close_delimited_answers() {
        // Captured from Caddy 2.6.2.
        let body = "{\"error\":\"If-Match header did not match current config hash\"}\n";
        let answer = |length: usize| {
            format!(
                "HTTP/1.1 412 Precondition Failed\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n{body}"
            )
        };
        let r = parse_response(answer(62).as_bytes()).unwrap();
        assert_eq!((r.status, r.text(), r.etag), (412, body.to_string(), None));
        assert_eq!(
            parse_response(answer(63).as_bytes()),
            Err("the answer ended after 62 of 63 body bytes".into())
        );
        let r = parse_response(b"HTTP/1.1 200 OK\r\nETag: \"/x 1\"\r\n\r\nrest").unwrap();
        assert_eq!(
            (r.status, r.text(), r.etag),
            (200, "rest".into(), Some("\"/x 1\"".into()))
        );
    }

    #[test]
    fn what_is_not_an_answer() {
        assert_eq!(
            parse_response(b""),
            Err("the connection closed without an answer".into())
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-"),
            Err("the answer ended inside its headers".into())
        );
        assert!(
            parse_response(b"SSH-2.0-OpenSSH_9.2\r\n")
                .unwrap_err()
                .starts_with("not an HTTP answer")
        );
    }
}
