//! A parent's answer to cuttle's `CONNECT` (and to a request on a connection to the parent):
//! the head (bounded), the body drained for the next authentication leg (Content-Length or
//! chunked, bounded), bytes past a 2xx that belong to the tunnel. The first byte says whether
//! the request was a CONNECT.
use cuttle::upstream::auth;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((which, reply)) = data.split_first() else {
            return;
        };
        let connect = which & 1 == 0;
        let mut stream = tokio::io::join(reply, tokio::io::sink());
        let head =
            b"CONNECT origin.example.org:443 HTTP/1.1\r\nHost: origin.example.org:443\r\n\r\n";
        let got = cuttle_fuzz::runtime().block_on(cuttle::fuzzing::parent_reply(
            &mut stream,
            head,
            connect,
        ));
        if let Ok((status, headers, rest, _reusable)) = got {
            assert!(rest.len() <= reply.len());
            if status == 407 {
                let _ = auth::parse_offers(&headers);
            }
        }
    });
}
