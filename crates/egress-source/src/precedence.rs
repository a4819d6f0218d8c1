//! Which setting wins when a source, a path and a route all have an opinion.

use crate::{EgressPathConfig, EgressSource, MxListEntry};

/// The name to send in EHLO: the path's `ehlo_domain`, else the source's, else
/// `host_name` (the machine's name).
///
/// ```
/// use egress_source::{effective_ehlo_domain, EgressPathConfig, EgressSource};
/// let mut src = EgressSource::named("ip-1");
/// src.ehlo_domain = Some("mta1.example.com".into());
/// let path = EgressPathConfig::default();
/// assert_eq!(effective_ehlo_domain(&path, &src, "host.local"), "mta1.example.com");
/// ```
pub fn effective_ehlo_domain<'a>(
    path: &'a EgressPathConfig,
    source: &'a EgressSource,
    host_name: &'a str,
) -> &'a str {
    path.ehlo_domain
        .as_deref()
        .or(source.ehlo_domain.as_deref())
        .unwrap_or(host_name)
}

/// The destination port: the source's `remote_port`, else the mx_list entry's
/// port, else the path's `smtp_port` (default 25).
///
/// ```
/// use egress_source::{effective_port, EgressPathConfig, EgressSource};
/// let mut src = EgressSource::named("ip-1");
/// let path = EgressPathConfig::default();
/// assert_eq!(effective_port(&src, None, &path), 25);
/// src.remote_port = Some(2525);
/// assert_eq!(effective_port(&src, None, &path), 2525);
/// ```
pub fn effective_port(
    source: &EgressSource,
    mx: Option<&MxListEntry>,
    path: &EgressPathConfig,
) -> u16 {
    source
        .remote_port
        .or(mx.and_then(MxListEntry::port))
        .unwrap_or(path.smtp_port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(ehlo: Option<&str>, port: Option<u16>) -> EgressSource {
        let mut s = EgressSource::named("s");
        s.ehlo_domain = ehlo.map(Into::into);
        s.remote_port = port;
        s
    }

    fn path(ehlo: Option<&str>, port: u16) -> EgressPathConfig {
        EgressPathConfig {
            ehlo_domain: ehlo.map(Into::into),
            smtp_port: port,
            ..Default::default()
        }
    }

    #[test]
    fn ehlo_path_wins_over_source() {
        let (p, s) = (
            path(Some("path.example"), 25),
            source(Some("src.example"), None),
        );
        assert_eq!(effective_ehlo_domain(&p, &s, "host"), "path.example");
    }

    #[test]
    fn ehlo_source_when_path_silent() {
        let (p, s) = (path(None, 25), source(Some("src.example"), None));
        assert_eq!(effective_ehlo_domain(&p, &s, "host"), "src.example");
    }

    #[test]
    fn ehlo_host_name_when_both_silent() {
        let (p, s) = (path(None, 25), source(None, None));
        assert_eq!(effective_ehlo_domain(&p, &s, "host"), "host");
    }

    #[test]
    fn port_source_wins_over_mx_and_path() {
        let mx: MxListEntry = "mx.example:2600".parse().unwrap();
        let (p, s) = (path(None, 587), source(None, Some(2525)));
        assert_eq!(effective_port(&s, Some(&mx), &p), 2525);
    }

    #[test]
    fn port_mx_entry_wins_over_path() {
        let mx: MxListEntry = "mx.example:2600".parse().unwrap();
        let (p, s) = (path(None, 587), source(None, None));
        assert_eq!(effective_port(&s, Some(&mx), &p), 2600);
    }

    #[test]
    fn port_path_when_mx_has_none() {
        let mx: MxListEntry = "mx.example".parse().unwrap();
        let (p, s) = (path(None, 587), source(None, None));
        assert_eq!(effective_port(&s, Some(&mx), &p), 587);
        assert_eq!(effective_port(&s, None, &p), 587);
    }

    #[test]
    fn port_default_is_25() {
        let s = source(None, None);
        assert_eq!(effective_port(&s, None, &EgressPathConfig::default()), 25);
    }
}
