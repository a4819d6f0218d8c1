//! KumoMTA's `Test` resolver: zones in master-file syntax answered in process, each
//! declared secure or not, and names that answer SERVFAIL — fixed answers for
//! tests of decisions that depend on DNSSEC. Parsing is hickory's zone parser; no
//! file is read (`$INCLUDE` is refused).

use crate::answer::{expiry, Answer, DnsError, DnsErrorKind, Security};
use crate::config::TestConfig;
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_proto::serialize::txt::Parser;
use std::collections::BTreeMap;

/// CNAME steps followed before giving up (a loop, or a chain no sender should
/// follow).
const MAX_CNAME_STEPS: usize = 8;

pub(crate) struct TestZones {
    zones: Vec<Zone>,
    servfail: Vec<LowerName>,
}

struct Zone {
    origin: LowerName,
    secure: bool,
    records: BTreeMap<RrKey, RecordSet>,
}

impl TestZones {
    pub(crate) fn new(config: &TestConfig) -> Result<TestZones, String> {
        let mut zones = Vec::new();
        for (i, z) in config.zones.iter().enumerate() {
            let (origin, records) = Parser::new(z.zone.as_str(), None, Some(Name::root()))
                .parse()
                .map_err(|e| {
                    format!(
                        "Test.zones[{}]: {e} (expected a zone in master-file syntax \
                         beginning with $ORIGIN)",
                        i + 1
                    )
                })?;
            zones.push(Zone {
                origin: LowerName::new(&origin),
                secure: z.secure,
                records,
            });
        }
        let servfail = config
            .servfail
            .iter()
            .map(|n| lower(n).map_err(|e| format!("Test.servfail: {n:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(TestZones { zones, servfail })
    }

    /// The zone with the longest origin that contains `name`.
    fn zone_of(&self, name: &LowerName) -> Option<&Zone> {
        self.zones
            .iter()
            .filter(|z| z.origin.zone_of(name))
            .max_by_key(|z| z.origin.num_labels())
    }

    pub(crate) fn lookup(
        &self,
        name: &str,
        rtype: RecordType,
        what: &str,
    ) -> Result<Answer<Record>, DnsError> {
        let failed = |kind, detail: &str| DnsError::new(name, what, kind, detail);
        let asked = lower(name).map_err(|e| failed(DnsErrorKind::Failed, &e))?;
        let mut at = asked.clone();
        let mut out = Vec::new();
        let mut security = None;
        for _ in 0..=MAX_CNAME_STEPS {
            if self.servfail.contains(&at) {
                return Err(failed(
                    DnsErrorKind::ServerFailure,
                    "SERVFAIL (Test resolver's servfail list)",
                ));
            }
            let Some(zone) = self.zone_of(&at) else {
                return Err(failed(DnsErrorKind::NoRecords { nxdomain: true }, ""));
            };
            // The answer is as secure as the zone of the name asked, whatever a
            // CNAME leads to (RFC 7672 §2.2.2).
            let security = *security.get_or_insert(if zone.secure {
                Security::Secure
            } else {
                Security::Insecure
            });
            let found = |t| zone.records.get(&RrKey::new(at.clone(), t));
            if let Some(set) = found(rtype) {
                out.extend(set.records_without_rrsigs().cloned());
                let valid_until = out.iter().map(|r| expiry(r.ttl())).min();
                return Ok(Answer {
                    records: out,
                    security,
                    valid_until: valid_until.unwrap_or_else(|| expiry(0)),
                });
            }
            let cname = found(RecordType::CNAME)
                .and_then(|set| set.records_without_rrsigs().next().cloned());
            match cname {
                Some(record) if rtype != RecordType::CNAME => {
                    let RData::CNAME(target) = record.data() else {
                        break;
                    };
                    at = LowerName::new(&target.0);
                    out.push(record);
                }
                _ => {
                    let exists = zone.records.keys().any(|k| k.name == at);
                    return Err(failed(DnsErrorKind::NoRecords { nxdomain: !exists }, ""));
                }
            }
        }
        Err(failed(
            DnsErrorKind::Failed,
            &format!("more than {MAX_CNAME_STEPS} CNAME steps"),
        ))
    }
}

fn lower(name: &str) -> Result<LowerName, String> {
    let mut n = Name::from_utf8(name.trim()).map_err(|e| format!("not a valid DNS name: {e}"))?;
    n.set_fqdn(true);
    Ok(LowerName::new(&n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TestZone;

    fn zones() -> TestZones {
        TestZones::new(&TestConfig {
            zones: vec![
                TestZone {
                    zone: "$ORIGIN secure.test.\n@ 300 IN MX 10 mx\nmx 300 IN A 127.0.0.9\n\
                           alias 300 IN CNAME host.plain.test.\n\
                           _25._tcp.mx 300 IN TLSA 3 1 1 0011\n"
                        .into(),
                    secure: true,
                },
                TestZone {
                    zone: "$ORIGIN plain.test.\nhost 60 IN A 127.0.0.8\n".into(),
                    secure: false,
                },
            ],
            servfail: vec!["broken.secure.test".into()],
        })
        .unwrap()
    }

    #[test]
    fn answers_with_the_zone_security() {
        let z = zones();
        let a = z.lookup("mx.secure.test", RecordType::A, "A").unwrap();
        assert_eq!(a.security, Security::Secure);
        assert_eq!(a.records.len(), 1);
        let a = z.lookup("HOST.plain.test.", RecordType::A, "A").unwrap();
        assert_eq!(a.security, Security::Insecure);
    }

    #[test]
    fn a_secure_cname_into_an_unsigned_zone_is_secure() {
        let a = zones()
            .lookup("alias.secure.test", RecordType::A, "A")
            .unwrap();
        assert_eq!(a.security, Security::Secure);
        assert_eq!(a.records.len(), 2, "the CNAME and the A record");
    }

    #[test]
    fn absent_names_servfail_and_unknown_zones() {
        let z = zones();
        let e = z
            .lookup("mx.secure.test", RecordType::AAAA, "AAAA")
            .unwrap_err();
        assert_eq!(e.kind, DnsErrorKind::NoRecords { nxdomain: false });
        let e = z
            .lookup("nope.secure.test", RecordType::A, "A")
            .unwrap_err();
        assert_eq!(e.kind, DnsErrorKind::NoRecords { nxdomain: true });
        let e = z
            .lookup("broken.secure.test", RecordType::TLSA, "TLSA")
            .unwrap_err();
        assert_eq!(e.kind, DnsErrorKind::ServerFailure);
        assert!(e.to_string().contains("broken.secure.test"), "{e}");
        let e = z
            .lookup("elsewhere.example", RecordType::A, "A")
            .unwrap_err();
        assert!(e.is_no_records());
    }

    #[test]
    fn a_zone_that_does_not_parse_is_named() {
        let e = TestZones::new(&TestConfig {
            zones: vec![TestZone {
                zone: "$ORIGIN x.\n@ IN MX not-a-number\n".into(),
                secure: false,
            }],
            servfail: vec![],
        })
        .err()
        .unwrap();
        assert!(e.starts_with("Test.zones[1]:"), "{e}");
    }
}
