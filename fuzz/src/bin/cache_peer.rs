//! `CACHE_PEER`: the list of parents with their credentials (the grammar of the Squid image).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(s) = std::str::from_utf8(data) else {
            return;
        };
        if let Ok(peers) = cuttle::config::peer::parse_cache_peer(s) {
            for p in peers {
                // Every rendering masks the password.
                let _ = format!("{p:?}");
            }
        }
    });
}
