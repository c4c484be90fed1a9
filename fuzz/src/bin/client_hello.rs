//! The ClientHello peek of an intercepted CONNECT to an address: the server name decides
//! whether to intercept; every byte read is replayed.
use std::time::Duration;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let mut io = data;
        let got = cuttle_fuzz::runtime().block_on(cuttle::fuzzing::client_hello(
            &mut io,
            Duration::from_secs(5),
        ));
        if let Ok((replay, _sni)) = got {
            // What is replayed is exactly what was read, in order.
            assert!(data.starts_with(&replay));
        }
    });
}
