//! What the destination's published TLS policies ask of a route: MTA-STS for
//! the domain (which MX hosts, TLS verified) and DANE for each host (its TLSA
//! records), with what TLS reporting hears of them.

use super::{tls_rpt, Route, Tried};
use crate::dns::Destination;
use crate::outbound::dane;
use crate::outbound::mta_sts::{self, InForce};
use crate::outbound::tls_report::ResultType;
use crate::txlog::TxLog;
use egress_smtp::Reply;
use std::net::SocketAddr;
use std::time::Duration;

impl Route<'_> {
    /// What DANE demands of `dest` when the path enables it; the text of a
    /// `451 4.7.5` when its TLSA records cannot be known.
    pub(super) async fn dane(
        &self,
        dest: &Destination,
        log: &mut TxLog,
    ) -> Result<dane::Demand, String> {
        if !self.path.enable_dane {
            return Ok(dane::Demand::None);
        }
        let demand = dane::demand(&self.ctx.dns, dest).await;
        match &demand {
            Ok(dane::Demand::EncryptOnly) => {
                log.note(&format!(
                    "dane=encrypt_only: {} publishes TLSA records, none usable (TLS required, \
                     certificate not checked by DANE)",
                    dest.host
                ));
                self.ctx.report.dane("encrypt_only");
            }
            Err(_) => self.ctx.report.dane("deferred"),
            _ => {}
        }
        demand.map_err(|text| format!("egress source '{}': {text}", self.source.name))
    }

    /// The domain's MTA-STS policy applied to its MX hosts: with `enforce`, only
    /// the hosts its patterns match (none: `451 4.7.5`), and the policy; with
    /// `testing`, every host, and what enforce would have refused noted.
    pub(super) async fn mta_sts<'h>(
        &self,
        hosts: Vec<(&'h Destination, SocketAddr)>,
        log: &mut TxLog,
    ) -> Result<StsApplied<'h>, Tried> {
        let unchanged = |hosts| StsApplied {
            hosts,
            reported: Reported::NoPolicy,
        };
        if !(self.path.enable_mta_sts && self.by_mx) {
            return Ok(unchanged(hosts));
        }
        let budget = self.path.connect_timeout.min(Duration::from_secs(10));
        let Some(sts) = self
            .ctx
            .mta_sts
            .policy(&self.ctx.dns, &*self.ctx.report, self.domain, budget)
            .await
        else {
            return Ok(unchanged(hosts));
        };
        let policy = &sts.policy;
        log.note(&format!("mta_sts={} (id {})", policy.mode, sts.id));
        let matching: Vec<_> = hosts
            .iter()
            .copied()
            .filter(|(d, _)| {
                policy
                    .mx
                    .iter()
                    .any(|p| mta_sts::parse::mx_matches(p, &d.host))
            })
            .collect();
        let refusal = matching.is_empty().then(|| {
            format!(
                "MTA-STS policy of {} (id {}, mode {}): no MX host matches its mx patterns ({})",
                self.domain,
                sts.id,
                policy.mode,
                policy.mx.join(", ")
            )
        });
        match policy.mode {
            mta_sts::parse::Mode::Enforce => match refusal {
                Some(text) => {
                    self.ctx.report.mta_sts("refused");
                    self.mx_not_listed(&sts, &hosts);
                    Err(Tried::Refused(Reply::new(451, [4, 7, 5], text)))
                }
                None => Ok(StsApplied {
                    hosts: matching,
                    reported: Reported::Policy(sts),
                }),
            },
            _ => {
                let reported = match refusal {
                    Some(text) => {
                        log.note(&format!("{text}; delivering anyway (testing)"));
                        self.mx_not_listed(&sts, &hosts);
                        Reported::Counted
                    }
                    None => Reported::Policy(sts),
                };
                Ok(StsApplied { hosts, reported })
            }
        }
    }

    /// TLS reporting hears that no MX host is one the policy lists (once per
    /// transaction, as the first host's failure).
    fn mx_not_listed(&self, sts: &InForce, hosts: &[(&Destination, SocketAddr)]) {
        if let Some((dest, addr)) = hosts.first() {
            let policy = tls_rpt::sts_policy(self.domain, sts);
            let result = Some(ResultType::ValidationFailure);
            self.tls_failed_under(&policy, dest, *addr, result);
        }
    }
}

/// What a domain's MTA-STS policy made of its MX hosts.
pub(super) struct StsApplied<'h> {
    /// The hosts that may be tried.
    pub hosts: Vec<(&'h Destination, SocketAddr)>,
    /// What TLS reporting is told of the sessions.
    pub reported: Reported,
}

/// The MTA-STS side of what TLS reporting hears of a transaction's sessions.
pub(super) enum Reported {
    /// No policy: sessions are counted under "no-policy-found".
    NoPolicy,
    /// Sessions are counted under this policy (enforce or testing).
    Policy(InForce),
    /// Already counted: a testing policy that lists none of the MX hosts is
    /// reported as the failure enforce would have made, not also as a success.
    Counted,
}

impl Reported {
    pub(super) fn is_counted(&self) -> bool {
        matches!(self, Reported::Counted)
    }
}
