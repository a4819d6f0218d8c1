//! The `msg` of `smtp_server_message_received`: the part of KumoMTA's Message API
//! that acts on a message in flight — envelope, meta, headers, data, DKIM
//! signing. Anything else is named when called, with the reason egressd has
//! no such method.

use crate::dkim::DkimSigner;
use crate::error::located;
use crate::extras::warn_once;
use egress_policy::MessageInFlight;
use mlua::{Lua, LuaSerdeExt, MetaMethod, Table, UserData, UserDataMethods, Value};
use std::sync::{Arc, Mutex};

/// The message, shared between the caller and the handler's state: the caller
/// reads it back once the handler returns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Shared(pub Arc<Mutex<MessageInFlight>>);

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut MessageInFlight) -> R) -> R {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// An envelope address as KumoMTA's `EnvelopeAddress`: `user`, `domain`,
/// `email`, and the address when printed.
fn address(lua: &Lua, email: &str) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let (user, domain) = email.rsplit_once('@').unwrap_or((email, ""));
    t.set("user", user)?;
    t.set("domain", domain)?;
    t.set("email", email)?;
    let meta = lua.create_table()?;
    let shown = email.to_owned();
    meta.set(
        "__tostring",
        lua.create_function(move |_, _: Value| Ok(shown.clone()))?,
    )?;
    t.set_metatable(Some(meta));
    Ok(t)
}

/// Each header field as (name, value): the value unfolded, without the space
/// after the colon or the final CR LF.
fn headers(data: &[u8]) -> Vec<(String, String)> {
    let (fields, _) = egress_dkim::message_fields(data);
    fields
        .iter()
        .map(|f| {
            let name = String::from_utf8_lossy(egress_dkim::field_name(f)).into_owned();
            let colon = f.iter().position(|b| *b == b':').map_or(f.len(), |c| c + 1);
            let raw = String::from_utf8_lossy(&f[colon..]);
            let value = raw.replace("\r\n", "");
            (
                name,
                value.trim_start().trim_end_matches(['\r', '\n']).to_owned(),
            )
        })
        .collect()
}

/// The message with the header fields `drop` says go removed.
fn without(data: &[u8], drop: impl Fn(&str) -> bool) -> Vec<u8> {
    let (fields, body) = egress_dkim::message_fields(data);
    let mut out = Vec::with_capacity(data.len());
    for f in fields {
        if !drop(&String::from_utf8_lossy(egress_dkim::field_name(f))) {
            out.extend_from_slice(f);
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// `NAME: VALUE` CR LF; with `encode`, a non-ASCII value as an RFC 2047 word and
/// a long one folded at whitespace.
fn field(name: &str, value: &str, encode: bool) -> String {
    let clean: String = value.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    let value = if encode && !clean.is_ascii() {
        use base64::Engine;
        format!(
            "=?UTF-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(clean.as_bytes())
        )
    } else if encode {
        let mut folded = String::new();
        let mut line = name.len() + 2;
        for (i, word) in clean.split(' ').enumerate() {
            if i > 0 {
                if line + word.len() + 1 > 75 {
                    folded.push_str("\r\n ");
                    line = 1;
                } else {
                    folded.push(' ');
                    line += 1;
                }
            }
            folded.push_str(word);
            line += word.len();
        }
        folded
    } else {
        clean
    };
    format!("{name}: {value}\r\n")
}

fn names(list: Option<Vec<String>>) -> Option<Vec<String>> {
    list.map(|l| l.into_iter().map(|n| n.to_ascii_lowercase()).collect())
}

/// KumoMTA's meta names for an imported header: lowercase, `-` as `_`.
fn meta_name(header: &str) -> String {
    header.to_ascii_lowercase().replace('-', "_")
}

/// What the first mailbox of a From (or To) value is: (display name, address).
fn mailbox(value: &str) -> Option<(String, String)> {
    let value = value.split(',').next()?.trim();
    match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => {
            let name = value[..open].trim().trim_matches('"').to_owned();
            Some((name, value[open + 1..close].trim().to_owned()))
        }
        _ if value.contains('@') => Some((String::new(), value.to_owned())),
        _ => None,
    }
}

/// Meta that chose the route in KumoMTA, set after egress chose it at RCPT.
const ROUTING_META: &[&str] = &["tenant", "campaign", "queue"];

impl UserData for Shared {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("id", |_, this, ()| Ok(this.with(|m| m.id.clone())));
        methods.add_method("sender", |lua, this, ()| {
            address(lua, &this.with(|m| m.sender.clone()))
        });
        methods.add_method("recipient_list", |lua, this, ()| {
            let list = lua.create_table()?;
            for r in this.with(|m| m.recipients.clone()) {
                list.push(address(lua, &r)?)?;
            }
            Ok(list)
        });
        methods.add_method("recipient", |lua, this, ()| {
            let all = this.with(|m| m.recipients.clone());
            match all.as_slice() {
                [one] => Ok(Value::Table(address(lua, one)?)),
                many => {
                    let list = lua.create_table()?;
                    for r in many {
                        list.push(address(lua, r)?)?;
                    }
                    Ok(Value::Table(list))
                }
            }
        });
        methods.add_method("get_meta", |lua, this, name: String| {
            match this.with(|m| m.meta.get(&name).cloned()) {
                Some(v) => lua.to_value(&v),
                None => Ok(Value::Nil),
            }
        });
        methods.add_method("set_meta", |lua, this, (name, value): (String, Value)| {
            if ROUTING_META.contains(&name.as_str()) {
                warn_once(&format!(
                    "msg:set_meta('{name}', …) in smtp_server_message_received: egress chose this message's route at RCPT (the client already has the destination's replies), so it does not move the message; the value is kept as meta for its log records"
                ));
            }
            let json: serde_json::Value = lua.from_value(value)?;
            this.with(|m| m.meta.insert(name, json));
            Ok(())
        });
        methods.add_method("get_data", |lua, this, ()| {
            lua.create_string(this.with(|m| m.data.clone()))
        });
        methods.add_method("get_first_named_header_value", |_, this, name: String| {
            let all = this.with(|m| headers(&m.data));
            Ok(all
                .into_iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&name))
                .map(|(_, v)| v))
        });
        methods.add_method("get_all_named_header_values", |_, this, name: String| {
            let all = this.with(|m| headers(&m.data));
            Ok(all
                .into_iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(&name))
                .map(|(_, v)| v)
                .collect::<Vec<_>>())
        });
        methods.add_method("get_all_headers", |lua, this, ()| {
            let list = lua.create_table()?;
            for (n, v) in this.with(|m| headers(&m.data)) {
                list.push(lua.create_sequence_from([n, v])?)?;
            }
            Ok(list)
        });
        methods.add_method(
            "prepend_header",
            |_, this, (name, value, encode): (String, String, Option<bool>)| {
                let line = field(&name, &value, encode.unwrap_or(false));
                this.with(|m| {
                    let mut data = line.into_bytes();
                    data.extend_from_slice(&m.data);
                    m.data = data;
                });
                Ok(())
            },
        );
        methods.add_method(
            "append_header",
            |_, this, (name, value, encode): (String, String, Option<bool>)| {
                let line = field(&name, &value, encode.unwrap_or(false));
                this.with(|m| {
                    let (fields, body) = egress_dkim::message_fields(&m.data);
                    let mut out: Vec<u8> = fields.concat();
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(body);
                    m.data = out;
                });
                Ok(())
            },
        );
        methods.add_method("remove_x_headers", |_, this, list: Option<Vec<String>>| {
            let list = names(list);
            this.with(|m| {
                m.data = without(&m.data, |n| match &list {
                    Some(l) => l.contains(&n.to_ascii_lowercase()),
                    None => n.len() > 2 && n[..2].eq_ignore_ascii_case("x-"),
                })
            });
            Ok(())
        });
        methods.add_method("remove_all_named_headers", |_, this, name: String| {
            this.with(|m| m.data = without(&m.data, |n| n.eq_ignore_ascii_case(&name)));
            Ok(())
        });
        methods.add_method("import_x_headers", |_, this, list: Option<Vec<String>>| {
            let list = names(list);
            this.with(|m| {
                for (n, v) in headers(&m.data) {
                    let wanted = match &list {
                        Some(l) => l.contains(&n.to_ascii_lowercase()),
                        None => n.len() > 2 && n[..2].eq_ignore_ascii_case("x-"),
                    };
                    let key = meta_name(&n);
                    if wanted && !m.meta.contains_key(&key) {
                        m.meta.insert(key, v.into());
                    }
                }
            });
            Ok(())
        });
        methods.add_method("from_header", |lua, this, ()| {
            let all = this.with(|m| headers(&m.data));
            let Some((_, value)) = all
                .into_iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("From"))
            else {
                return Ok(Value::Nil);
            };
            let Some((name, email)) = mailbox(&value) else {
                return Ok(Value::Nil);
            };
            let t = address(lua, &email)?;
            t.set("name", name)?;
            Ok(Value::Table(t))
        });
        methods.add_method(
            "dkim_sign",
            |lua, this, signer: mlua::UserDataRef<DkimSigner>| {
                let signed = this.with(|m| {
                    signer.0.sign(&m.data).map(|f| (f, m)).map(|(f, m)| {
                        let mut data = f.into_bytes();
                        data.extend_from_slice(&m.data);
                        m.data = data;
                    })
                });
                signed.map_err(|e| located(lua, format!("msg:dkim_sign: {e}")))
            },
        );
        methods.add_meta_method(MetaMethod::Index, |lua, _, name: String| -> mlua::Result<Value> {
            Err(located(
                lua,
                format!(
                    "msg:{name} is not provided by egressd: in smtp_server_message_received it offers the methods that act on a message in flight (sender, recipient, recipient_list, id, get_meta, set_meta, get_data, get_first_named_header_value, get_all_named_header_values, get_all_headers, prepend_header, append_header, remove_x_headers, remove_all_named_headers, import_x_headers, from_header, dkim_sign); egressd does not queue or reschedule messages itself, so scheduling and queue methods have nothing to act on"
                ),
            ))
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &[u8] = b"From: \"Ann B\" <ann@example.com>\r\nX-Campaign-ID: 123\r\nSubject: one\r\n two\r\nx-mailer: m\r\n\r\nbody\r\n";

    #[test]
    fn headers_unfolded_and_removed() {
        let h = headers(M);
        assert_eq!(h[2], ("Subject".to_string(), "one two".to_string()));
        let kept = without(M, |n| n.len() > 2 && n[..2].eq_ignore_ascii_case("x-"));
        assert_eq!(
            String::from_utf8(kept).unwrap(),
            "From: \"Ann B\" <ann@example.com>\r\nSubject: one\r\n two\r\n\r\nbody\r\n"
        );
        assert_eq!(
            mailbox("\"Ann B\" <ann@example.com>"),
            Some(("Ann B".into(), "ann@example.com".into()))
        );
        assert_eq!(meta_name("X-Campaign-ID"), "x_campaign_id");
    }

    #[test]
    fn encoded_fields_fold_or_become_words() {
        assert_eq!(field("X-A", "plain", false), "X-A: plain\r\n");
        assert_eq!(field("X-A", "é", true), "X-A: =?UTF-8?B?w6k=?=\r\n");
        let long = field("Subject", &"word ".repeat(30), true);
        assert!(long.lines().all(|l| l.len() <= 76), "{long}");
    }
}
