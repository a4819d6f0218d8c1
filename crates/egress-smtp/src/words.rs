//! Library values said in words, for replies and log lines (never a `Debug` dump).

use std::time::Duration;

/// `5s`, `1m 30s`, `250ms`: short and exact.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    let millis = d.subsec_millis();
    if secs == 0 {
        return format!("{millis}ms");
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if h > 0 {
        parts.push(format!("{h}h"));
    }
    if m > 0 {
        parts.push(format!("{m}m"));
    }
    if s > 0 || millis > 0 || parts.is_empty() {
        parts.push(if millis > 0 {
            format!("{s}.{millis:03}s")
        } else {
            format!("{s}s")
        });
    }
    parts.join(" ")
}

/// What smtp-proto found wrong, in words.
pub fn parse_error(e: &smtp_proto::Error) -> String {
    use smtp_proto::Error::*;
    match e {
        NeedsMoreData { .. } => "incomplete".into(),
        UnknownCommand => "unknown command".into(),
        InvalidSenderAddress => "bad sender address syntax".into(),
        InvalidRecipientAddress => "bad recipient address syntax".into(),
        SyntaxError { syntax } => format!("syntax: {syntax}"),
        InvalidParameter { param } => format!("invalid parameter {param}"),
        UnsupportedParameter { param } => format!("unsupported parameter {param}"),
        ResponseTooLong => "line too long".into(),
        InvalidResponse { code } => {
            format!("not a reply line (expected a three-digit code, got {code})")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(250)), "250ms");
        assert_eq!(duration(Duration::from_secs(5)), "5s");
        assert_eq!(duration(Duration::from_secs(90)), "1m 30s");
        assert_eq!(duration(Duration::from_secs(3600)), "1h");
        assert_eq!(duration(Duration::from_millis(1500)), "1.500s");
    }
}
