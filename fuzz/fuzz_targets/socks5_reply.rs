//! SOCKS5 replies from a proxy: any octets give a reply or an error in words.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let mut stream = data;
    let result = runtime().block_on(egress_connect::read_socks5_reply(&mut stream));
    match result {
        Ok((code, bound)) => {
            assert!(!egress_connect::reply_in_words(code).is_empty());
            if let Some(addr) = bound {
                // An address was read: 4 + 4 (IPv4) or 16 (IPv6) + 2 octets.
                let used = data.len() - stream.len();
                assert_eq!(used, 4 + if addr.is_ipv4() { 4 } else { 16 } + 2);
            }
        }
        Err(e) => assert!(!format!("{e}").contains("{"), "{e}"),
    }
});
