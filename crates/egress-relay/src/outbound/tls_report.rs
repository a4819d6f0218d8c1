//! What TLS reporting (RFC 8460, TLS-RPT) would tell each destination: per
//! policy in force — MTA-STS, DANE, or none found — how many TLS sessions were
//! made and which failed, by result type, sending IP and receiving host.
//!
//! The relay counts here as it opens destination sessions; [`TlsReports::report`]
//! writes the counts in the shape of an RFC 8460 JSON report, so an operator
//! sees which destinations refuse their TLS before a receiver's report says so.
//! No I/O here; the report is built on demand (egressd serves it at
//! `GET /api/admin/tls-report/v1`). Counts are since the relay started: a
//! process restart starts a new report period.

use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::SystemTime;

/// Policies counted at most; past it, new ones are not (the report says how many
/// sessions went uncounted), so a flood of domains cannot grow memory.
const MAX_POLICIES: usize = 10_000;

/// A failure's kind, as RFC 8460 §4.3 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResultType {
    /// The destination did not offer STARTTLS, or refused it.
    StarttlsNotSupported,
    /// The certificate does not name the MX host.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// The certificate does not chain to a trusted root.
    CertificateNotTrusted,
    /// Any other handshake or certificate failure (a DANE mismatch among them), or
    /// an MX host the MTA-STS policy does not list.
    ValidationFailure,
    /// The TLSA records could not be had: bogus DNSSEC, SERVFAIL, a timeout.
    DnssecInvalid,
}

impl ResultType {
    /// The RFC's name (`certificate-expired`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ResultType::StarttlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::DnssecInvalid => "dnssec-invalid",
        }
    }
}

/// The policy a session was made under, as the report identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PolicyInForce {
    /// `sts`, `tlsa` or `no-policy-found`.
    pub kind: &'static str,
    /// The recipient domain.
    pub domain: String,
    /// The policy's text: an MTA-STS policy's lines, or the TLSA records.
    pub strings: Vec<String>,
    /// MTA-STS: the policy's mx patterns; DANE: the MX host whose records they are.
    pub mx_host: Vec<String>,
}

impl PolicyInForce {
    /// No MTA-STS policy and no usable DANE records for `domain`.
    pub fn none_found(domain: &str) -> PolicyInForce {
        PolicyInForce {
            kind: "no-policy-found",
            domain: domain.to_owned(),
            strings: Vec::new(),
            mx_host: Vec::new(),
        }
    }
}

/// One failed session, as the report's `failure-details` group them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Failure {
    /// What failed.
    pub result: ResultType,
    /// The address the session left from, when the source names one.
    pub sending_ip: Option<IpAddr>,
    /// The MX host tried.
    pub mx_host: String,
    /// Its address.
    pub receiving_ip: IpAddr,
}

#[derive(Default)]
struct Tally {
    successes: u64,
    failures: BTreeMap<Failure, u64>,
}

/// The counts, per policy, since the relay started.
pub struct TlsReports {
    since: SystemTime,
    by_policy: Mutex<HashMap<PolicyInForce, Tally>>,
    uncounted: std::sync::atomic::AtomicU64,
}

impl Default for TlsReports {
    fn default() -> Self {
        TlsReports {
            since: SystemTime::now(),
            by_policy: Mutex::default(),
            uncounted: Default::default(),
        }
    }
}

impl TlsReports {
    /// A TLS session was made under `policy`.
    pub fn success(&self, policy: &PolicyInForce) {
        self.count(policy, |tally| tally.successes += 1);
    }

    /// A session under `policy` failed as `failure` says.
    pub fn failure(&self, policy: &PolicyInForce, failure: Failure) {
        self.count(policy, |tally| {
            *tally.failures.entry(failure).or_default() += 1
        });
    }

    fn count(&self, policy: &PolicyInForce, add: impl FnOnce(&mut Tally)) {
        let mut by_policy = self.by_policy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tally) = by_policy.get_mut(policy) {
            return add(tally);
        }
        if by_policy.len() >= MAX_POLICIES {
            self.uncounted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        add(by_policy.entry(policy.clone()).or_default());
    }

    /// The counts as an RFC 8460 report (§4.4's JSON) from `organization`, for the
    /// period from the relay's start to `now`. Policies are sorted (by domain, type
    /// and text), so two reports of the same counts read the same.
    pub fn report(&self, organization: &str, product: &str, now: SystemTime) -> Value {
        let by_policy = self.by_policy.lock().unwrap_or_else(|e| e.into_inner());
        let mut policies: Vec<(&PolicyInForce, &Tally)> = by_policy.iter().collect();
        policies.sort_by_key(|&(p, _)| (&p.domain, p.kind, &p.strings));
        let start = humantime::format_rfc3339_seconds(self.since).to_string();
        let end = humantime::format_rfc3339_seconds(now).to_string();
        let policies: Vec<Value> = policies
            .into_iter()
            .map(|(policy, tally)| {
                let failed: u64 = tally.failures.values().sum();
                let details: Vec<Value> = tally
                    .failures
                    .iter()
                    .map(|(f, n)| {
                        let mut detail = json!({
                            "result-type": f.result.as_str(),
                            "receiving-mx-hostname": f.mx_host,
                            "receiving-ip": f.receiving_ip.to_string(),
                            "failed-session-count": n,
                        });
                        if let Some(ip) = f.sending_ip {
                            detail["sending-mta-ip"] = ip.to_string().into();
                        }
                        detail
                    })
                    .collect();
                let mut described = json!({
                    "policy-type": policy.kind,
                    "policy-domain": policy.domain,
                });
                if !policy.strings.is_empty() {
                    described["policy-string"] = policy.strings.clone().into();
                }
                if !policy.mx_host.is_empty() {
                    described["mx-host"] = policy.mx_host.clone().into();
                }
                json!({
                    "policy": described,
                    "summary": {
                        "total-successful-session-count": tally.successes,
                        "total-failure-session-count": failed,
                    },
                    "failure-details": details,
                })
            })
            .collect();
        let mut report = json!({
            "organization-name": organization,
            "contact-info": format!("postmaster@{organization}"),
            // Each report covers a different period (they all start at the start).
            "report-id": format!("{start}_{end}@{organization}"),
            "date-range": { "start-datetime": start, "end-datetime": end },
            "policies": policies,
        });
        let uncounted = self.uncounted.load(std::sync::atomic::Ordering::Relaxed);
        if uncounted > 0 {
            // Not in RFC 8460: what the bound on policies left out.
            report[format!("{product}-uncounted-sessions")] = uncounted.into();
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_report_shape() {
        let reports = TlsReports::default();
        let policy = PolicyInForce::none_found("example.test");
        reports.success(&policy);
        reports.failure(
            &policy,
            Failure {
                result: ResultType::CertificateExpired,
                sending_ip: Some("192.0.2.1".parse().unwrap()),
                mx_host: "mx.example.test".into(),
                receiving_ip: "198.51.100.7".parse().unwrap(),
            },
        );
        let json = reports.report("sender.test", "egressd", std::time::SystemTime::now());
        let policy = &json["policies"][0];
        assert_eq!(policy["policy"]["policy-type"], "no-policy-found");
        assert_eq!(policy["summary"]["total-successful-session-count"], 1);
        assert_eq!(
            policy["failure-details"][0]["result-type"],
            "certificate-expired"
        );
    }

    fn sts(domain: &str) -> PolicyInForce {
        PolicyInForce {
            kind: "sts",
            domain: domain.into(),
            strings: vec!["version: STSv1".into(), "mode: enforce".into()],
            mx_host: vec!["*.mx.test".into()],
        }
    }

    fn failure(result: ResultType, mx: &str) -> Failure {
        Failure {
            result,
            sending_ip: None,
            mx_host: mx.into(),
            receiving_ip: "127.0.0.1".parse().unwrap(),
        }
    }

    #[test]
    fn failures_are_grouped_by_what_failed_where_and_summed() {
        let reports = TlsReports::default();
        let policy = sts("b.test");
        reports.success(&policy);
        reports.success(&policy);
        for _ in 0..3 {
            reports.failure(
                &policy,
                failure(ResultType::CertificateNotTrusted, "a.mx.test"),
            );
        }
        reports.failure(
            &policy,
            failure(ResultType::CertificateExpired, "a.mx.test"),
        );
        reports.success(&PolicyInForce::none_found("a.test"));
        let json = reports.report("us.test", "egressd", SystemTime::now());
        let policies = json["policies"].as_array().unwrap();
        assert_eq!(policies[0]["policy"]["policy-domain"], "a.test", "sorted");
        let b = &policies[1];
        assert_eq!(b["policy"]["policy-type"], "sts");
        assert_eq!(b["policy"]["mx-host"][0], "*.mx.test");
        assert_eq!(b["summary"]["total-successful-session-count"], 2);
        assert_eq!(b["summary"]["total-failure-session-count"], 4);
        let details = b["failure-details"].as_array().unwrap();
        assert_eq!(details.len(), 2);
        // In the order of the RFC's list of result types.
        assert_eq!(details[0]["result-type"], "certificate-expired");
        assert_eq!(details[0]["failed-session-count"], 1);
        assert_eq!(details[1]["result-type"], "certificate-not-trusted");
        assert_eq!(details[1]["failed-session-count"], 3);
        assert!(details[1].get("sending-mta-ip").is_none());
        assert_eq!(json["organization-name"], "us.test");
    }

    #[test]
    fn the_number_of_policies_is_bounded() {
        let reports = TlsReports::default();
        for n in 0..MAX_POLICIES + 5 {
            reports.success(&PolicyInForce::none_found(&format!("d{n}.test")));
        }
        let json = reports.report("us.test", "egressd", SystemTime::now());
        assert_eq!(json["policies"].as_array().unwrap().len(), MAX_POLICIES);
        assert_eq!(json["egressd-uncounted-sessions"], 5);
    }
}
