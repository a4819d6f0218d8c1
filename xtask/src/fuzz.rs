//! `cargo xtask fuzz [TARGET] [--time SECONDS]`: libFuzzer through cargo-fuzz, which
//! needs a nightly toolchain (installed with rustup when missing, like cargo-fuzz).
//!
//! Seeds live in `fuzz/seeds/TARGET` (small, committed); what libFuzzer learns goes
//! to `fuzz/work/TARGET` and crashes to `fuzz/artifacts/TARGET` (both ignored by git).
//! Runs without a sanitizer: the code under test forbids `unsafe`, and the time goes
//! to executions instead.

use crate::{root, run, Result};
use std::process::Command;
use std::time::Instant;

/// The `[[bin]]` names in fuzz/Cargo.toml.
fn targets() -> Vec<String> {
    let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap_or_default();
    manifest
        .split("[[bin]]")
        .skip(1)
        .filter_map(|bin| {
            let line = bin.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split('"').nth(1)?.to_owned())
        })
        .collect()
}

fn ensure_tools() -> Result {
    let nightly = Command::new("cargo")
        .args(["+nightly", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !nightly {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))
        .map_err(|e| format!("{e}; cargo-fuzz needs nightly: rustup toolchain install nightly"))?;
    }
    let fuzz = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !fuzz {
        run(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
            .map_err(|e| format!("{e}; install it by hand: cargo install cargo-fuzz"))?;
    }
    Ok(())
}

/// Runs one target (or all) for `seconds` each and prints executions and crashes.
pub fn fuzz(args: &[String]) -> Result {
    let mut seconds = 60u64;
    let mut only = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--time" => {
                seconds = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--time takes a number of seconds")?
            }
            name => only = Some(name.to_owned()),
        }
    }
    let all = targets();
    let chosen: Vec<String> = match only {
        Some(name) if all.contains(&name) => vec![name],
        Some(name) => {
            return Err(format!(
                "no fuzz target `{name}`; targets: {}",
                all.join(", ")
            ))
        }
        None => all,
    };
    ensure_tools()?;
    let mut summary = Vec::new();
    for target in &chosen {
        let fuzz_dir = root().join("fuzz");
        let work = fuzz_dir.join("work").join(target);
        let seeds = fuzz_dir.join("seeds").join(target);
        let artifacts = fuzz_dir.join("artifacts").join(target);
        for dir in [&work, &seeds, &artifacts] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let started = Instant::now();
        let output = Command::new("cargo")
            .current_dir(&fuzz_dir)
            .args([
                "+nightly",
                "fuzz",
                "run",
                "--sanitizer",
                "none",
                "--debug-assertions",
            ])
            .arg(target)
            .arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .output()
            .map_err(|e| format!("cargo fuzz: {e}"))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let executions = log
            .lines()
            .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
            .map(|n| n.trim().to_owned())
            .unwrap_or_else(|| "?".into());
        let crashes = std::fs::read_dir(&artifacts)
            .map(|d| d.count())
            .unwrap_or(0);
        let line = format!(
            "xtask fuzz: {target:<16} {executions:>12} executions in {:.0}s, {crashes} crash file(s){}",
            started.elapsed().as_secs_f64(),
            if output.status.success() { "" } else { " — FAILED" }
        );
        println!("{line}");
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        summary.push((line, output.status.success()));
    }
    println!();
    for (line, _) in &summary {
        println!("{line}");
    }
    if summary.iter().all(|(_, ok)| *ok) {
        Ok(())
    } else {
        Err("a fuzz target found a crash; see fuzz/artifacts".into())
    }
}
