//! What a route tells TLS reporting (`outbound::tls_report`): under which
//! policy a destination session was made or failed, and as what.

use super::Route;
use crate::dns::Destination;
use crate::outbound::mta_sts;
use crate::outbound::tls_report::{Failure, PolicyInForce, ResultType};
use egress_dns::Tlsa;
use egress_smtp::{CertificateFault, StartTlsError};
use std::net::SocketAddr;
use std::sync::Arc;

/// An MX host as reports name it (without the final dot of a DNS answer).
fn mx_name(dest: &Destination) -> String {
    dest.host.trim_end_matches('.').to_owned()
}

/// How TLS reporting names an MTA-STS policy.
pub(super) fn sts_policy(domain: &str, sts: &mta_sts::InForce) -> PolicyInForce {
    let policy = &sts.policy;
    let mut strings = vec![
        "version: STSv1".to_owned(),
        format!("mode: {}", policy.mode),
    ];
    strings.extend(policy.mx.iter().map(|mx| format!("mx: {mx}")));
    strings.push(format!("max_age: {}", policy.max_age.as_secs()));
    PolicyInForce {
        kind: "sts",
        domain: domain.to_owned(),
        strings,
        mx_host: policy.mx.clone(),
    }
}

impl Route<'_> {
    /// The policy a session to `dest` is made under, as TLS reporting names it:
    /// usable DANE records first (they override MTA-STS for their host), then the
    /// MTA-STS policy (enforce or testing), else none.
    pub(super) fn tls_policy(
        &self,
        sts: Option<&mta_sts::InForce>,
        dane: &Option<Arc<[Tlsa]>>,
        dest: &Destination,
    ) -> PolicyInForce {
        match (dane, sts) {
            (Some(records), _) => self.tlsa_policy(records, dest),
            (None, Some(sts)) => sts_policy(self.domain, sts),
            (None, None) => PolicyInForce::none_found(self.domain),
        }
    }

    /// How TLS reporting names `dest`'s DANE policy: its TLSA `records` (none when
    /// they could not be had).
    pub(super) fn tlsa_policy(&self, records: &[Tlsa], dest: &Destination) -> PolicyInForce {
        PolicyInForce {
            kind: "tlsa",
            domain: self.domain.to_owned(),
            strings: records.iter().map(|r| r.to_string()).collect(),
            mx_host: vec![mx_name(dest)],
        }
    }

    pub(super) fn tls_failed(
        &self,
        sts: Option<&mta_sts::InForce>,
        dane: &Option<Arc<[Tlsa]>>,
        dest: &Destination,
        addr: SocketAddr,
        result: Option<ResultType>,
    ) {
        self.tls_failed_under(&self.tls_policy(sts, dane, dest), dest, addr, result);
    }

    pub(super) fn tls_failed_under(
        &self,
        policy: &PolicyInForce,
        dest: &Destination,
        addr: SocketAddr,
        result: Option<ResultType>,
    ) {
        let Some(result) = result else { return };
        let source = &self.source;
        let failure = Failure {
            result,
            sending_ip: source
                .source_address
                .or(source.ha_proxy_source_address)
                .or(source.socks5_proxy_source_address),
            mx_host: mx_name(dest),
            receiving_ip: addr.ip(),
        };
        self.ctx.tls_reports.failure(policy, failure);
    }
}

/// What TLS reporting (RFC 8460) counts a failed STARTTLS as.
pub(super) fn tls_report_result(e: &StartTlsError) -> ResultType {
    match e {
        StartTlsError::NotOffered | StartTlsError::Refused(_) => ResultType::StarttlsNotSupported,
        StartTlsError::Certificate { fault, .. } => match fault {
            CertificateFault::HostMismatch => ResultType::CertificateHostMismatch,
            CertificateFault::Expired => ResultType::CertificateExpired,
            CertificateFault::NotTrusted => ResultType::CertificateNotTrusted,
            CertificateFault::Other => ResultType::ValidationFailure,
        },
        StartTlsError::Handshake(_) | StartTlsError::Io(_) => ResultType::ValidationFailure,
    }
}
