//! `cargo xtask` — the one entry point for chores.
//!
//! ```text
//! cargo xtask peers          install the real test peers (apt), idempotent
//! cargo xtask ci             peers, fmt, clippy, doc, package, rust-version, each crate's tests alone, end-to-end tests
//! cargo xtask test -p NAME   one crate's tests
//! cargo xtask bench [NAME]   benchmarks (all, or: source, cache, connect, lua, throttle, relay, load, metrics, spooled, proxy, mta-sts, dkim)
//! cargo xtask fuzz [TARGET] [--time SECONDS]   libFuzzer targets (cargo-fuzz, nightly)
//! ```
//!
//! Deliberately std-only, so it compiles in seconds on a fresh machine.

mod fuzz;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

/// The crates under `crates/`, in dependency order (the model first), tested one at
/// a time so a crate that only builds thanks to feature unification is caught.
fn crates() -> Vec<String> {
    const ORDER: &[&str] = &[
        "egress-source",
        "egress-cache",
        "egress-connect",
        "egress-dns",
        "egress-smtp",
        "egress-policy",
        "egress-tls",
        "egress-http",
        "egress-lua",
        "egress-throttle",
        "egress-spool",
        "egress-record",
        "egress-log",
        "egress-dkim",
        "egress-relay",
        "egressd",
        "egress-proxy",
    ];
    let mut names: Vec<String> = std::fs::read_dir(root().join("crates"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter(|e| e.path().join("Cargo.toml").is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort_by_key(|n| {
        (
            ORDER.iter().position(|o| o == n).unwrap_or(ORDER.len()),
            n.clone(),
        )
    });
    names
}

/// The end-to-end package in `tests/`.
const E2E: &str = "egress-e2e";

/// Peers: (what must be present, Debian package). A plain name is a binary (looked
/// up in sbin too); `perl:Module` a Perl module; `/path` a file.
const PEERS: &[(&str, &str)] = &[
    ("haproxy", "haproxy"),
    ("danted", "dante-server"),
    ("microsocks", "microsocks"),
    ("swaks", "swaks"),
    ("zstdcat", "zstd"),
    // DKIM's independent verifier (dkimpy), and Ed25519 for it.
    (
        "/usr/lib/python3/dist-packages/dkim/__init__.py",
        "python3-dkim",
    ),
    (
        "/usr/lib/python3/dist-packages/nacl/__init__.py",
        "python3-nacl",
    ),
    ("python3", "python3"),
    // swaks --tls
    ("perl:Net::SSLeay", "libnet-ssleay-perl"),
    ("postfix", "postfix"),
    ("smtp-sink", "postfix"),
    ("smtp-source", "postfix"),
    // Postfix's SMTP client authenticating with PLAIN/LOGIN (Cyrus SASL plugins)
    (
        "/usr/lib/x86_64-linux-gnu/sasl2/libplain.so.2",
        "libsasl2-modules",
    ),
    // a mail store over LMTP (use_lmtp), and the auth service of the smarthost
    // that wants a password (Postfix's smtpd_sasl_type = dovecot)
    ("dovecot", "dovecot-core"),
    ("/usr/lib/dovecot/lmtp", "dovecot-lmtpd"),
    ("dnsmasq", "dnsmasq"),
    // DANE: zones signed with ldnsutils, served by an authoritative NSD; openssl
    // computes the TLSA data apart from the code under test
    ("nsd", "nsd"),
    ("ldns-keygen", "ldnsutils"),
    ("ldns-signzone", "ldnsutils"),
    ("openssl", "openssl"),
    // syscalls per relayed message in `cargo xtask bench relay`
    ("strace", "strace"),
    // an independent SOCKS5 client for egress-proxy
    ("curl", "curl"),
    // shared throttles, leases and suspensions
    ("redis-server", "redis-server"),
    // a Redis Cluster made by the tests (`redis-cli --cluster create`)
    ("redis-cli", "redis-tools"),
    // smtplib clients in the TLS and AUTH tests
    ("python3", "python3"),
    // the operations tests: a real Prometheus scraping egressd, and promtool
    // checking the exposition
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    // `systemd-analyze verify` on contrib/egressd.service
    ("systemd-analyze", "systemd"),
];

/// Whether a [`PEERS`] entry is present.
fn present(what: &str) -> bool {
    if let Some(module) = what.strip_prefix("perl:") {
        return Command::new("perl")
            .arg(format!("-M{module}"))
            .arg("-e1")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
    }
    if what.starts_with('/') {
        return Path::new(what).exists();
    }
    which(what).is_some()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("peers") => peers(),
        Some("ci") => ci(),
        Some("test") => match args
            .iter()
            .position(|a| a == "-p")
            .and_then(|i| args.get(i + 1))
        {
            Some(name) => cargo(&["test", "-p", name]),
            None => Err("usage: cargo xtask test -p NAME".into()),
        },
        Some("bench") => bench(args.get(1).map(String::as_str)),
        Some("fuzz") => fuzz::fuzz(&args[1..]),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

const USAGE: &str = "usage: cargo xtask <peers | ci | test -p NAME | bench [source|cache|connect|lua|throttle|relay|load|metrics|spooled|proxy|mta-sts|dkim] | fuzz [TARGET] [--time SECONDS]>";

pub(crate) type Result<T = (), E = String> = std::result::Result<T, E>;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cargo_bin() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn cargo(args: &[&str]) -> Result {
    run(Command::new(cargo_bin()).args(args))
}

pub(crate) fn run(cmd: &mut Command) -> Result {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .map_err(|e| format!("{shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

/// Runs the CI steps in order, printing one summary line per step, and stops at the first failure.
fn ci() -> Result {
    // A clean clone builds everything once: incremental caches only cost disk (they
    // were a third of the target directory) and time there.
    std::env::set_var("CARGO_INCREMENTAL", "0");
    report_free_disk();
    let mut steps: Vec<(String, Box<dyn Fn() -> Result>)> = vec![
        ("peers".into(), Box::new(peers)),
        (
            "fmt".into(),
            Box::new(|| cargo(&["fmt", "--all", "--check"])),
        ),
        (
            "clippy".into(),
            Box::new(|| {
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ])
            }),
        ),
        (
            // Public items are documented (`warn(missing_docs)`); broken links fail here.
            "doc".into(),
            Box::new(|| {
                run(Command::new(cargo_bin())
                    .args(["doc", "--workspace", "--no-deps"])
                    .env("RUSTDOCFLAGS", "-D warnings"))
            }),
        ),
    ];
    steps.push((
        // Every crate of the workspace as crates.io would take it: packaged (the
        // files it needs are in it; path dependencies carry versions) and built
        // from the package alone.
        "package".into(),
        Box::new(|| {
            forget_unpacked_packages();
            // Its own target directory, emptied first: cargo never rebuilds a
            // registry crate it has built once, so a package verified on an
            // earlier run would be linked again as it was.
            let target = root().join("target/package-check");
            let _ = std::fs::remove_dir_all(&target);
            let target = target.display().to_string();
            let mut args = vec!["package", "--allow-dirty", "--target-dir", target.as_str()];
            let names = crates();
            for name in &names {
                args.extend(["-p", name.as_str()]);
            }
            cargo(&args)
        }),
    ));
    steps.push(("rust-version".into(), Box::new(rust_version)));
    for name in crates() {
        let step = format!("test -p {name}");
        steps.push((step, Box::new(move || cargo(&["test", "-p", &name]))));
    }
    // The embedding example the egress-relay README shows, run as a user would.
    steps.push((
        "example: egress-relay embed".into(),
        Box::new(|| cargo(&["run", "-p", "egress-relay", "--example", "embed"])),
    ));
    if root().join("tests/Cargo.toml").is_file() {
        steps.push((
            format!("end-to-end ({E2E})"),
            Box::new(|| cargo(&["test", "-p", E2E])),
        ));
    }
    let mut summary = Vec::new();
    for (name, step) in &steps {
        let started = Instant::now();
        let result = step();
        let line = format!(
            "xtask ci: {:<28} {} in {:.1}s",
            name,
            if result.is_ok() { "ok" } else { "FAILED" },
            started.elapsed().as_secs_f64()
        );
        println!("{line}");
        summary.push(line);
        if let Err(e) = result {
            println!("\n{}", summary.join("\n"));
            return Err(format!("step `{name}` failed: {e}"));
        }
    }
    println!("\n{}", summary.join("\n"));
    Ok(())
}

/// Prints the free space where the build goes, so a run that fills the disk says so
/// at its start rather than as a linker's bus error.
fn report_free_disk() {
    let target = root().join("target");
    let at = if target.is_dir() { target } else { root() };
    if let Ok(out) = Command::new("df").arg("-h").arg(&at).output() {
        print!(
            "xtask ci: disk where the build goes:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

fn which(binary: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| Path::new(dir).join(binary))
        .find(|p| p.is_file());
    found
}

/// Installs the missing peers with apt. Fast when all are present; `apt-get update`
/// runs once, and only when something is missing (a fresh machine has no lists).
fn peers() -> Result {
    let mut missing: Vec<&str> = PEERS
        .iter()
        .filter(|(what, _)| !present(what))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        println!(
            "xtask peers: all present ({})",
            PEERS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    println!("xtask peers: installing {}", missing.join(" "));
    let hint = "install them by hand: apt-get install -y haproxy dante-server microsocks swaks libnet-ssleay-perl postfix libsasl2-modules dovecot-core dovecot-lmtpd dnsmasq nsd ldnsutils openssl strace curl redis-server redis-tools python3 prometheus systemd";
    // One script, run as root (directly or through `sudo -n`). policy-rc.d keeps the
    // packages' own services from starting: the tests start every peer themselves, and
    // danted's service fails to start with its stock configuration, which would make
    // apt report an error. Postfix is preseeded so it asks nothing.
    let script = format!(
        r#"set -e
export DEBIAN_FRONTEND=noninteractive
created=
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  created=1
fi
trap 'if [ -n "$created" ]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
apt-get update -qq
apt-get install -y -qq --no-install-recommends {}
"#,
        missing.join(" ")
    );
    let mut cmd = if is_root() {
        Command::new("sh")
    } else {
        let mut sudo = Command::new("sudo");
        sudo.args(["-n", "sh"]);
        sudo
    };
    run(cmd.arg("-c").arg(&script)).map_err(|e| format!("{e}; {hint}"))?;
    let still: Vec<&str> = PEERS
        .iter()
        .filter(|(what, _)| !present(what))
        .map(|p| p.0)
        .collect();
    if !still.is_empty() {
        return Err(format!(
            "after apt-get install these are still missing: {}; {hint}",
            still.join(", ")
        ));
    }
    println!("xtask peers: installed");
    Ok(())
}

/// `cargo package` builds each crate against the others through a local registry
/// whose crates it unpacks under `$CARGO_HOME/registry/src/` — and reuses what is
/// unpacked there for the same name and version, so a second run on one machine
/// would verify against the first run's sources. Those unpacked copies go first
/// (never crates.io's: its directories are named for its index).
fn forget_unpacked_packages() {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    let Some(src) = home.map(|h| h.join("registry/src")) else {
        return;
    };
    let names = crates();
    let Ok(registries) = std::fs::read_dir(&src) else {
        return;
    };
    for registry in registries.flatten() {
        if registry.file_name().to_string_lossy().starts_with("index.") {
            continue;
        }
        let Ok(unpacked) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for dir in unpacked.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            let ours = names.iter().any(|n| {
                name.strip_prefix(n.as_str())
                    .is_some_and(|v| v.starts_with("-0") || v.starts_with("-1"))
            });
            if ours {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
    }
}

/// The declared `rust-version` is one CI checks: the toolchain it runs on is that
/// version (everything above was built with it), or — on a newer one — the
/// workspace is also checked with that version through rustup.
fn rust_version() -> Result {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml"))
        .map_err(|e| format!("reading Cargo.toml: {e}"))?;
    let declared = manifest
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .ok_or("Cargo.toml: no rust-version in [workspace.package]")?;
    let out = Command::new("rustc")
        .arg("--version")
        .output()
        .map_err(|e| format!("rustc --version: {e}"))?;
    let running = String::from_utf8_lossy(&out.stdout).to_string();
    // `rustc 1.95.0 (…)`: compare major.minor (and patch when declared).
    let version = running.split_whitespace().nth(1).unwrap_or("");
    let same = version == declared || version.starts_with(&format!("{declared}."));
    if same {
        println!("xtask ci: rust-version {declared} is the toolchain this run built and tested with ({})", running.trim());
        return Ok(());
    }
    println!("xtask ci: running {version}, declared {declared}: checking with {declared} too");
    let toolchain = format!("+{declared}");
    let installed = run(Command::new("rustup").args([
        "toolchain",
        "install",
        &declared,
        "--profile",
        "minimal",
    ]));
    installed.map_err(|e| {
        format!(
            "the declared rust-version {declared} cannot be checked here ({e}); install that \
             toolchain, or set rust-version in Cargo.toml to the toolchain CI runs ({version})"
        )
    })?;
    // `+TOOLCHAIN` is understood by rustup's cargo proxy, not by the cargo running xtask.
    run(Command::new("cargo").args([toolchain.as_str(), "check", "--workspace", "--all-targets"]))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

fn bench(which: Option<&str>) -> Result {
    let all = [
        "source", "cache", "connect", "lua", "throttle", "relay", "load", "metrics", "spooled",
        "proxy", "mta-sts", "dkim",
    ];
    let chosen: Vec<&str> = match which {
        None | Some("all") => all.to_vec(),
        Some(one) if all.contains(&one) => vec![one],
        Some(other) => return Err(format!("unknown benchmark `{other}`; {USAGE}")),
    };
    for name in chosen {
        match name {
            "source" => cargo(&["bench", "-p", "egress-source"])?,
            "mta-sts" => {
                peers()?;
                cargo(&[
                    "bench", "-p", "egressd", "--bench", "relay", "--", "mta-sts",
                ])?
            }
            "proxy" => {
                peers()?;
                cargo(&["bench", "-p", "egress-proxy", "--bench", "proxy"])?
            }
            "cache" => cargo(&["bench", "-p", "egress-cache"])?,
            "connect" => {
                peers()?;
                cargo(&["bench", "-p", "egress-connect"])?
            }
            "lua" => cargo(&["bench", "-p", "egress-lua"])?,
            "throttle" => {
                peers()?;
                cargo(&["bench", "-p", "egress-throttle"])?;
                cargo(&[
                    "bench", "-p", "egressd", "--bench", "relay", "--", "shaping",
                ])?
            }
            "dkim" => {
                peers()?;
                cargo(&["bench", "-p", "egressd", "--bench", "dkim"])?
            }
            "relay" => {
                peers()?;
                cargo(&["bench", "-p", "egressd", "--bench", "relay"])?;
                cargo(&["bench", "-p", "egressd", "--bench", "cost"])?
            }
            "load" => {
                peers()?;
                cargo(&["bench", "-p", "egressd", "--bench", "load"])?
            }
            // Also part of `relay`; alone, for the operations issue's figure.
            "metrics" if which == Some("metrics") => {
                peers()?;
                cargo(&[
                    "bench", "-p", "egressd", "--bench", "relay", "--", "metrics",
                ])?
            }
            "metrics" => {}
            "spooled" if which == Some("spooled") => {
                peers()?;
                cargo(&[
                    "bench", "-p", "egressd", "--bench", "relay", "--", "spooled",
                ])?
            }
            "spooled" => {}
            _ => unreachable!("checked above"),
        }
    }
    Ok(())
}
