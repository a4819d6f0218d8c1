//! A minimal SOCKS5 proxy that implements the KumoProxy source-address convention,
//! for tests only: a BIND request names the address to send from, the CONNECT that
//! follows on the same connection leaves from it.
//!
//! Neither dante nor microsocks implements this convention, so until a proxy that
//! does ships in this workspace, the client side is proven against this one. It
//! does the real bind and connect (socket2) and relays bytes; it is not a mock.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// The proxy; stops accepting when dropped.
pub struct SourceBindingSocks {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl SourceBindingSocks {
    /// Starts on `127.0.0.1:<free port>`.
    pub fn start() -> SourceBindingSocks {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind source-binding proxy");
        let addr = listener.local_addr().expect("local addr");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        thread::spawn(move || {
            for client in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(client) = client {
                    thread::spawn(move || {
                        let _ = serve(client);
                    });
                }
            }
        });
        SourceBindingSocks { addr, stop }
    }
}

impl Drop for SourceBindingSocks {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

fn read_addr(s: &mut TcpStream, atyp: u8) -> io::Result<SocketAddr> {
    let ip = match atyp {
        1 => {
            let mut b = [0; 4];
            s.read_exact(&mut b)?;
            IpAddr::V4(Ipv4Addr::from(b))
        }
        4 => {
            let mut b = [0; 16];
            s.read_exact(&mut b)?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return Err(io::Error::other("address type not supported")),
    };
    let mut port = [0; 2];
    s.read_exact(&mut port)?;
    Ok(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

fn reply(s: &mut TcpStream, code: u8, addr: SocketAddr) -> io::Result<()> {
    let mut msg = vec![5, code, 0];
    match addr.ip() {
        IpAddr::V4(ip) => {
            msg.push(1);
            msg.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            msg.push(4);
            msg.extend_from_slice(&ip.octets());
        }
    }
    msg.extend_from_slice(&addr.port().to_be_bytes());
    s.write_all(&msg)
}

fn serve(mut client: TcpStream) -> io::Result<()> {
    let mut greeting = [0; 2];
    client.read_exact(&mut greeting)?;
    let mut methods = vec![0; usize::from(greeting[1])];
    client.read_exact(&mut methods)?;
    client.write_all(&[5, 0])?;
    let mut source: Option<IpAddr> = None;
    loop {
        let mut head = [0; 4];
        client.read_exact(&mut head)?;
        let addr = read_addr(&mut client, head[3])?;
        match head[1] {
            2 => {
                source = Some(addr.ip());
                reply(&mut client, 0, SocketAddr::new(addr.ip(), 0))?;
            }
            1 => {
                let out = connect_from(source, addr);
                let out = match out {
                    Ok(out) => out,
                    Err(_) => return reply(&mut client, 5, addr),
                };
                reply(&mut client, 0, out.local_addr()?)?;
                return relay(client, out);
            }
            _ => return reply(&mut client, 7, addr),
        }
    }
}

fn connect_from(source: Option<IpAddr>, dest: SocketAddr) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(dest),
        socket2::Type::STREAM,
        None,
    )?;
    if let Some(ip) = source {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&dest.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

fn relay(a: TcpStream, b: TcpStream) -> io::Result<()> {
    let (mut a2, mut b2) = (a.try_clone()?, b.try_clone()?);
    let up = thread::spawn(move || {
        let _ = io::copy(&mut a2, &mut b2);
        let _ = b2.shutdown(Shutdown::Write);
    });
    let (mut a, mut b) = (a, b);
    let _ = io::copy(&mut b, &mut a);
    let _ = a.shutdown(Shutdown::Write);
    let _ = up.join();
    Ok(())
}
