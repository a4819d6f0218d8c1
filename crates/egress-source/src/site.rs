//! The site name: one name for all the hosts a domain's mail goes to, so that
//! limits keyed by (source, site) hold for every domain sharing those hosts.
//! KumoMTA factors the MX host names into one pseudo-regex; so do we.

/// Factors `hosts` (MX host names, any case, with or without a trailing dot) into
/// one name: the labels they share at the end, and the differing parts in front as
/// an alternation — optional when one host is the shared part itself. The port is
/// kept on the last label when it is not 25.
///
/// ```
/// use egress_source::site_name;
/// let yahoo = ["mta6.am0.yahoodns.net", "mta5.am0.yahoodns.net.", "MTA7.am0.yahoodns.net"];
/// assert_eq!(site_name(&yahoo, 25), "(mta5|mta6|mta7).am0.yahoodns.net");
/// let gmail = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com",
///              "alt2.gmail-smtp-in.l.google.com", "alt3.gmail-smtp-in.l.google.com",
///              "alt4.gmail-smtp-in.l.google.com"];
/// assert_eq!(site_name(&gmail, 25), "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com");
/// assert_eq!(site_name(&["mx.example.com"], 2525), "mx.example.com:2525");
/// assert_eq!(site_name(&["[127.0.0.1]"], 25), "[127.0.0.1]");
/// ```
pub fn site_name<S: AsRef<str>>(hosts: &[S], port: u16) -> String {
    let mut names: Vec<Vec<String>> = hosts
        .iter()
        .map(|h| {
            h.as_ref()
                .trim_end_matches('.')
                .to_ascii_lowercase()
                .split('.')
                .map(str::to_owned)
                .collect()
        })
        .collect();
    names.sort();
    names.dedup();
    let with_port = |name: String| {
        if port == 25 {
            name
        } else {
            format!("{name}:{port}")
        }
    };
    let Some(first) = names.first() else {
        return with_port(String::new());
    };
    if names.len() == 1 {
        return with_port(first.join("."));
    }
    // Labels shared at the end by every name.
    let mut shared = 0;
    while names.iter().all(|n| n.len() > shared)
        && names
            .iter()
            .all(|n| n[n.len() - 1 - shared] == first[first.len() - 1 - shared])
    {
        shared += 1;
    }
    let suffix = first[first.len() - shared..].join(".");
    let mut optional = false;
    let mut prefixes: Vec<String> = Vec::new();
    for n in &names {
        let prefix = n[..n.len() - shared].join(".");
        if prefix.is_empty() {
            optional = true;
        } else {
            prefixes.push(prefix);
        }
    }
    prefixes.sort();
    let group = format!(
        "({}){}",
        prefixes.join("|"),
        if optional { "?" } else { "" }
    );
    with_port(if suffix.is_empty() {
        group
    } else {
        format!("{group}.{suffix}")
    })
}
