//! Negotiate: the parent's `Proxy-Authenticate` offers, its SPNEGO NegTokenResp (bare or
//! GSS-API framed), and a KDC's reply (AS-REP, TGS-REP, KRB-ERROR). The first byte picks.
use cuttle::upstream::auth::{self, spnego};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((which, rest)) = data.split_first() else {
            return;
        };
        match which % 3 {
            0 => {
                let _ = spnego::parse_response(rest);
            }
            1 => {
                let _ = cuttle::fuzzing::kdc_reply(rest);
            }
            _ => {
                let offers = auth::parse_offers(&cuttle_fuzz::fields(rest));
                let can = auth::Abilities {
                    basic: true,
                    ntlm: true,
                    negotiate: true,
                };
                let _ = auth::strongest(&offers, can);
                for o in offers.iter().filter_map(|o| o.token.as_deref()) {
                    let _ = spnego::parse_response(o);
                    let _ = cuttle::upstream::auth::ntlm::parse_challenge(o);
                }
            }
        }
    });
}
