//! Mailbox paths as they go back on the wire.
//!
//! smtp-proto hands us addresses with any quoting of the local part removed
//! (`"john doe"@example.com` arrives as `john doe@example.com`). Forwarded like
//! that, the destination would see a different, invalid address; so the local part
//! is quoted again whenever it is not a plain dot-atom (RFC 5321 §4.1.2).

/// The address as it goes between `<` and `>` in MAIL FROM or RCPT TO.
pub fn smtp_path(address: &str) -> String {
    let (local, domain) = match address.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (address, None),
    };
    let local = if local.is_empty() || is_dot_atom(local) {
        local.to_owned()
    } else {
        let mut quoted = String::with_capacity(local.len() + 2);
        quoted.push('"');
        for c in local.chars() {
            if c == '"' || c == '\\' {
                quoted.push('\\');
            }
            quoted.push(c);
        }
        quoted.push('"');
        quoted
    };
    match domain {
        Some(domain) => format!("{local}@{domain}"),
        None => local,
    }
}

fn is_dot_atom(s: &str) -> bool {
    s.split('.').all(|atom| {
        !atom.is_empty()
            && atom.chars().all(|c| {
                c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
            })
    })
}

#[cfg(test)]
mod tests {
    use super::smtp_path;

    #[test]
    fn plain_addresses_pass_unchanged() {
        assert_eq!(smtp_path("a.b+tag@example.com"), "a.b+tag@example.com");
        assert_eq!(smtp_path(""), "", "the null sender");
        assert_eq!(smtp_path("postmaster"), "postmaster");
        assert_eq!(smtp_path("üser@example.com"), "üser@example.com");
    }

    #[test]
    fn unusual_local_parts_are_quoted_again() {
        assert_eq!(
            smtp_path("john doe@example.com"),
            "\"john doe\"@example.com"
        );
        assert_eq!(smtp_path("a\"b@example.com"), "\"a\\\"b\"@example.com");
        assert_eq!(smtp_path(".lead@example.com"), "\".lead\"@example.com");
        assert_eq!(smtp_path("a..b@example.com"), "\"a..b\"@example.com");
    }
}
