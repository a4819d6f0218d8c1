//! Next hops a relay delivers to besides MX hosts: a smarthost that wants a
//! password (Postfix's smtpd asking Dovecot's auth service), and a mail store
//! over LMTP (Dovecot's lmtp service writing Maildirs).

use crate::{free_port, require, require_root, set_mode, temp_dir, wait_listening, Peer};
use crate::{Postfix, TestCa};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A Postfix smarthost on loopback that relays to `relayhost` only for clients
/// that authenticate (AUTH PLAIN, offered only after STARTTLS, with a certificate
/// for `127.0.0.1` from `ca`) as `user` with `password`. Postfix asks Dovecot's
/// auth service (`smtpd_sasl_type = dovecot` over loopback TCP): Debian's Postfix
/// reads Cyrus SASL's configuration from /etc/postfix/sasl whatever
/// `cyrus_sasl_config_path` says, and a test must not write to /etc.
pub fn sasl_smarthost(
    relayhost: SocketAddr,
    ca: &TestCa,
    user: &str,
    password: &str,
) -> (Postfix, Dovecot) {
    let auth = Dovecot::start_with(&[(user, Some(password))]);
    let issued = ca.issue("smarthost.test", Some("127.0.0.1".parse().unwrap()));
    let postfix = Postfix::start_with(
        relayhost,
        &format!(
            "mynetworks = 192.0.2.0/24\n\
             smtpd_relay_restrictions = permit_sasl_authenticated, reject\n\
             smtpd_sasl_auth_enable = yes\n\
             smtpd_sasl_type = dovecot\n\
             smtpd_sasl_path = inet:{}\n\
             smtpd_tls_auth_only = yes\n\
             {}",
            auth.auth_addr,
            crate::postfix_tls_main_cf(&issued)
        ),
    );
    (postfix, auth)
}

/// Dovecot on loopback: its LMTP service delivering into a Maildir per user under
/// its temporary directory (a recipient it does not know is refused with the
/// store's own `550 5.1.1`), and its auth service for Postfix's SASL.
pub struct Dovecot {
    /// Where LMTP is served.
    pub addr: SocketAddr,
    /// Where the auth service answers (`smtpd_sasl_type = dovecot`).
    pub auth_addr: SocketAddr,
    dir: tempfile::TempDir,
    peer: Peer,
}

impl Dovecot {
    /// Starts one knowing `users` (local parts; the domain is ignored).
    pub fn start(users: &[&str]) -> Dovecot {
        let users: Vec<(&str, Option<&str>)> = users.iter().map(|u| (*u, None)).collect();
        Self::start_with(&users)
    }

    /// Starts one knowing `users`, with passwords for the auth service.
    pub fn start_with(users: &[(&str, Option<&str>)]) -> Dovecot {
        let bin = require("dovecot");
        require_root("a private Dovecot instance");
        let dir = temp_dir("egress-dovecot-");
        set_mode(dir.path(), 0o755);
        let root = dir.path();
        let mail = root.join("mail");
        fs::create_dir_all(&mail).expect("mail directory");
        // Mail is written as `nobody` (Dovecot never delivers as root).
        set_mode(&mail, 0o777);
        // passwd-file: user:password:uid:gid:gecos:home:shell:extra
        let passwd: String = users
            .iter()
            .map(|(u, pw)| {
                let pw = pw.map(|p| format!("{{PLAIN}}{p}")).unwrap_or_default();
                format!("{u}:{pw}::::{}::\n", mail.join(u).display())
            })
            .collect();
        fs::write(root.join("users"), passwd).expect("users");
        let port = free_port();
        let auth_port = free_port();
        fs::write(
            root.join("dovecot.conf"),
            format!(
                "protocols = lmtp\n\
                 listen = 127.0.0.1\n\
                 base_dir = {root}/run\n\
                 state_dir = {root}/state\n\
                 log_path = {root}/dovecot.log\n\
                 instance_name = egress-{port}\n\
                 ssl = no\n\
                 mail_location = maildir:~/Maildir\n\
                 mail_uid = nobody\n\
                 mail_gid = nogroup\n\
                 first_valid_uid = 1\n\
                 auth_username_format = %Ln\n\
                 auth_mechanisms = plain login\n\
                 passdb {{\n  driver = passwd-file\n  args = {root}/users\n}}\n\
                 userdb {{\n  driver = passwd-file\n  args = {root}/users\n}}\n\
                 service lmtp {{\n  inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n}}\n\
                 service auth {{\n  inet_listener {{\n    address = 127.0.0.1\n    port = {auth_port}\n  }}\n}}\n\
                 service anvil {{\n  chroot =\n}}\n\
                 service stats {{\n  chroot =\n}}\n",
                root = root.display()
            ),
        )
        .expect("dovecot.conf");
        let mut cmd = Command::new(bin);
        cmd.arg("-F").arg("-c").arg(root.join("dovecot.conf"));
        let mut peer = Peer::spawn("dovecot", &mut cmd);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_listening(
            "dovecot (see dovecot.log in the test's temporary directory)",
            addr,
            &mut peer,
        );
        let auth_addr = SocketAddr::from(([127, 0, 0, 1], auth_port));
        wait_listening("dovecot's auth service", auth_addr, &mut peer);
        Dovecot {
            addr,
            auth_addr,
            dir,
            peer,
        }
    }

    /// The messages delivered to `user`'s Maildir (new/ and cur/).
    pub fn messages(&self, user: &str) -> Vec<String> {
        let maildir = self.dir.path().join("mail").join(user).join("Maildir");
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            out.extend(read_all(&maildir.join(sub)));
        }
        out
    }

    /// Dovecot's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// Its directory (configuration, Maildirs, log).
    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // TERM lets the master stop its lmtp processes; KILL would leave them.
        let _ = Command::new("kill")
            .arg(self.peer.id().to_string())
            .status();
        let _ = self.peer.wait_exit(std::time::Duration::from_secs(5));
    }
}

fn read_all(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .collect()
}
