//! DANE for SMTP (RFC 7672): what a destination host's TLSA records demand of the
//! session — KumoMTA's `enable_dane` decision table:
//!
//! | chain to the host | TLSA lookup                   | session                          |
//! |-------------------|-------------------------------|----------------------------------|
//! | not secure        | not asked                     | `enable_tls` as configured       |
//! | secure            | usable DANE-TA/DANE-EE        | TLS required, peer checked by them |
//! | secure            | records, none usable          | TLS required, certificate unchecked |
//! | secure            | securely absent / insecure    | `enable_tls` as configured       |
//! | secure            | bogus, SERVFAIL, timeout      | deferred (`451 4.7.5`), never clear text |

pub mod verify;

use crate::dns::{Destination, Dns};
use egress_dns::{Security, Tlsa};
use std::sync::Arc;

/// What DANE demands of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Demand {
    /// DANE does not apply (no secure chain, no TLSA records, or unsigned ones).
    None,
    /// TLS is mandatory and the peer must match one of these (usable) records.
    Authenticate(Arc<[Tlsa]>),
    /// Records are published but none is usable: TLS is mandatory, its
    /// certificate not checked by DANE (RFC 7672 §2.2: no downgrade to clear text).
    EncryptOnly,
}

/// What `dest`'s TLSA records demand; an error (the text of a `4.7.5`) when they
/// cannot be known for a host whose chain is secure.
pub async fn demand(dns: &Dns, dest: &Destination) -> Result<Demand, String> {
    if !dest.secure_chain {
        return Ok(Demand::None);
    }
    match dns.tlsa(&dest.host).await {
        Ok(found) if found.security == Security::Secure => {
            let usable: Vec<Tlsa> = found.records.into_iter().filter(verify::usable).collect();
            if usable.is_empty() {
                Ok(Demand::EncryptOnly)
            } else {
                Ok(Demand::Authenticate(usable.into()))
            }
        }
        Ok(_insecure) => Ok(Demand::None),
        Err(e) if e.is_no_records() => Ok(Demand::None),
        Err(e) => Err(format!(
            "DANE: the TLSA records of {}, whose MX and address records are DNSSEC-secure, \
             could not be had ({e}); deferred rather than sent without them",
            dest.host
        )),
    }
}
