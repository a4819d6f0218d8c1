//! Running the real egressd binary (the clients that talk to it are egress-e2e's).
#![allow(dead_code)]

use egress_e2e::{free_port, wait_listening, Peer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};

/// egressd serving a policy, stopped on drop. Its log is kept for assertions.
pub struct Egressd {
    pub addr: SocketAddr,
    /// The HTTP listener, when the policy has `{http}` in it.
    pub http: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    peer: Peer,
}

impl Egressd {
    /// Starts egressd with `policy`, in which `{listen}` stands for a free loopback
    /// address (and `{http}`, when present, for another: the HTTP listener's).
    pub fn start(policy: &str) -> Egressd {
        Self::start_with_args(policy, &[])
    }

    /// As [`start`](Self::start), with more command-line arguments.
    pub fn start_with_args(policy: &str, args: &[&str]) -> Egressd {
        Self::start_with_env(policy, args, &[])
    }

    /// As [`start_with_args`](Self::start_with_args), with environment variables
    /// (`SSL_CERT_FILE` for a test CA).
    pub fn start_with_env(policy: &str, args: &[&str], env: &[(&str, &str)]) -> Egressd {
        let dir = tempfile::tempdir().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let file = dir.path().join("policy.lua");
        let http = policy
            .contains("{http}")
            .then(|| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let mut text = policy.replace("{listen}", &addr.to_string());
        if let Some(http) = http {
            text = text.replace("{http}", &http.to_string());
        }
        std::fs::write(&file, text).unwrap();
        let log = std::fs::File::create(dir.path().join("egressd.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_egressd"));
        cmd.arg("serve")
            .arg("--policy")
            .arg(&file)
            .args(args)
            .envs(env.iter().copied())
            .env("EGRESSD_LOG", "info");
        cmd.stdout(log.try_clone().unwrap()).stderr(log);
        let mut peer = Peer::spawn_logged("egressd", &mut cmd);
        wait_listening("egressd", addr, &mut peer);
        if let Some(http) = http {
            wait_listening("egressd's HTTP listener", http, &mut peer);
        }
        Egressd {
            addr,
            http,
            dir,
            peer,
        }
    }

    /// Runs an `egressd` API command (`status`, `suspend`, …) against this
    /// instance's HTTP listener.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let http = self
            .http
            .expect("the policy starts no HTTP listener ({http})");
        Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(args)
            .arg("--endpoint")
            .arg(format!("http://{http}"))
            .output()
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("egressd.log")).unwrap_or_default()
    }

    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.lua")
    }

    pub fn pid(&self) -> u32 {
        self.peer.id()
    }

    /// Waits up to `limit` for egressd to exit; true if it did.
    pub fn wait_exit(&mut self, limit: std::time::Duration) -> bool {
        self.peer.wait_exit(limit)
    }
}
