//! PROXY v2 headers: ours parse back (with ppp) to the addresses we put in, and
//! any octets given to the parser fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ppp::v2::{Addresses, Header};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

fuzz_target!(|data: &[u8]| {
    let _ = Header::try_from(data);
    if data.len() < 37 {
        return;
    }
    let port = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
    let (src, dst) = if data[0] & 1 == 0 {
        let s: [u8; 4] = data[1..5].try_into().unwrap();
        let d: [u8; 4] = data[5..9].try_into().unwrap();
        (
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(s)), port(&data[33..35])),
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(d)), port(&data[35..37])),
        )
    } else {
        let s: [u8; 16] = data[1..17].try_into().unwrap();
        let d: [u8; 16] = data[17..33].try_into().unwrap();
        (
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(s)), port(&data[33..35])),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(d)), port(&data[35..37])),
        )
    };
    let header = egress_connect::proxy_v2_header(src, dst).expect("same family");
    let parsed = Header::try_from(&header[..]).expect("our header parses");
    let (s, d) = match parsed.addresses {
        Addresses::IPv4(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        Addresses::IPv6(a) => (
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        ),
        other => panic!("unexpected addresses {other:?}"),
    };
    assert_eq!((s, d), (src, dst));
    assert_eq!(parsed.len(), header.len());
});
