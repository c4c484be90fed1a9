//! NTLM: the parent's CHALLENGE_MESSAGE, and the AUTHENTICATE_MESSAGE built from it.
use cuttle::upstream::auth::ntlm;

fn main() {
    let identity = ntlm::Identity::parse("DOMAIN\\user", "WS");
    let hash = ntlm::NtHash::from_password("password");
    let negotiate = ntlm::negotiate();
    afl::fuzz!(|data: &[u8]| {
        if let Ok(challenge) = ntlm::parse_challenge(data) {
            let entropy = ntlm::Entropy {
                client_challenge: [1; 8],
                time: 0x01d0_0000_0000_0000,
            };
            let _ = ntlm::authenticate(&identity, &hash, &negotiate, &challenge, &entropy);
        }
    });
}
