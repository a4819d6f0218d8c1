//! What a SOCKS5 client sends egress-proxy: any octets give a message or an error
//! in words, never a panic, and a parsed message never claims more octets than
//! were given.
#![no_main]

use egress_proxy::socks5::{parse_credentials, parse_greeting, parse_request, Target};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((methods, used))) = parse_greeting(data) {
        assert!(used <= data.len() && used == 2 + methods.len());
    }
    if let Ok(Some((_, used))) = parse_credentials(data) {
        assert!(used <= data.len());
    }
    match parse_request(data) {
        Ok(Some((request, used))) => {
            assert!(used <= data.len());
            if let Target::Name(name, _) = &request.target {
                assert!(!name.is_empty() && used == 5 + name.len() + 2);
            }
        }
        Ok(None) => {}
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
