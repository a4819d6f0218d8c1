//! The kinds of definition a policy returns, and how a handler's return value
//! becomes one.

use crate::error::{Describe, PolicyError};
use egress_source::{EgressPathConfig, EgressPool, EgressSource, ListenerDomain, QueueConfig};
use mlua::{Lua, LuaSerdeExt, UserData, Value};
use serde::de::DeserializeOwned;

/// A definition made by `kumo.make_*` (a userdata, so a handler's return can be
/// taken as is, already validated).
pub(crate) struct Made<T>(pub T);

impl<T: Definition> UserData for Made<T> {}

/// What each `kumo.make_*` builds.
pub(crate) trait Definition: DeserializeOwned + Clone + Send + 'static {
    /// The Lua function that builds it.
    const MAKER: &'static str;
    /// What a handler's return should look like, for the nil-return message.
    fn example(first_arg: Option<&str>) -> String;
    /// Rules between fields, and with what `init` declared (`lua` holds it).
    fn check(&self, lua: &Lua) -> Result<(), String>;
    /// Says what the table sets that is accepted but has no effect (once per
    /// process), before it is converted.
    fn notice(_table: &mlua::Table) {}
}

impl Definition for EgressSource {
    const MAKER: &'static str = "kumo.make_egress_source";
    fn example(name: Option<&str>) -> String {
        format!(
            "kumo.make_egress_source {{ name = '{}', source_address = '10.0.0.1' }}",
            name.unwrap_or("ip-1")
        )
    }
    fn check(&self, _: &Lua) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
}

impl Definition for EgressPool {
    const MAKER: &'static str = "kumo.make_egress_pool";
    fn example(name: Option<&str>) -> String {
        format!(
            "kumo.make_egress_pool {{ name = '{}', entries = {{ {{ name = 'ip-1' }} }} }}",
            name.unwrap_or("pool-1")
        )
    }
    fn check(&self, _: &Lua) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())
    }
}

impl Definition for EgressPathConfig {
    const MAKER: &'static str = "kumo.make_egress_path";
    fn example(_: Option<&str>) -> String {
        "kumo.make_egress_path { ehlo_domain = 'mta1.example.com' }".into()
    }
    fn check(&self, lua: &Lua) -> Result<(), String> {
        self.validate().map_err(|e| e.to_string())?;
        if self.enable_dane {
            // DANE on a resolver that cannot validate would never engage, silently:
            // refuse it where the operator reads.
            let validates = lua
                .app_data_ref::<crate::declarations::InitConfig>()
                .and_then(|init| init.resolver.as_ref().map(|r| r.validates()))
                .unwrap_or(false);
            if !validates {
                return Err(
                    "enable_dane = true needs a DNSSEC-validating resolver, and the \
                     resolver in use does not validate: in init, call \
                     kumo.dns.configure_resolver { name_servers = { 'IP:PORT' }, \
                     options = { validate = true } } (a resolver that forwards DNSSEC \
                     records, over TCP too), or set enable_dane = false"
                        .into(),
                );
            }
        }
        Ok(())
    }
    fn notice(table: &mlua::Table) {
        for (key, why) in egress_source::INERT_PATH_KEYS {
            if table.contains_key(*key).unwrap_or(false) {
                crate::extras::warn_once(&format!(
                    "{}: `{key}` is accepted and has no effect in egressd: {why}",
                    Self::MAKER
                ));
            }
        }
    }
}

impl Definition for QueueConfig {
    const MAKER: &'static str = "kumo.make_queue_config";
    fn example(_: Option<&str>) -> String {
        "kumo.make_queue_config { egress_pool = 'pool-1' }".into()
    }
    fn check(&self, _: &Lua) -> Result<(), String> {
        Ok(())
    }
}

impl Definition for ListenerDomain {
    const MAKER: &'static str = "kumo.make_listener_domain";
    fn example(_: Option<&str>) -> String {
        "kumo.make_listener_domain { relay_to = true }".into()
    }
    fn check(&self, _: &Lua) -> Result<(), String> {
        Ok(())
    }
    fn notice(table: &mlua::Table) {
        for key in ["log_oob", "log_arf"] {
            if matches!(table.get::<Value>(key), Ok(Value::Boolean(true))) {
                crate::extras::warn_once(&format!(
                    "{}: `{key} = true` is accepted and has no effect in egressd yet: it keeps \
                     no log of inbound reports, so mail to such a domain is relayed or refused \
                     as relay_to, relay_from and relay_hosts say",
                    Self::MAKER
                ));
            }
        }
    }
}

/// Turns a handler's return value into a definition.
pub(crate) fn from_return<T: Definition>(
    lua: &Lua,
    event: &'static str,
    args: &[Option<&str>],
    value: Value,
) -> Result<T, PolicyError> {
    let quoted = || crate::error::quote_args(args);
    let wrong = |got: String, detail: String| PolicyError::WrongReturn {
        event,
        args: quoted(),
        got,
        maker: T::MAKER,
        detail,
    };
    match value {
        Value::Nil => Err(PolicyError::ReturnedNil { event, args: quoted(), example: T::example(args[0]) }),
        Value::UserData(ud) => match ud.borrow::<Made<T>>() {
            Ok(made) => Ok(made.0.clone()),
            Err(_) => Err(wrong("a userdata of another kind".into(), format!("did the handler return the result of a different kumo.make_* function than {}?", T::MAKER))),
        },
        Value::Table(t) => {
            T::notice(&t);
            let made: T = lua
                .from_value(Value::Table(t))
                .map_err(|e| wrong("a table".into(), crate::error::serde_message(&e)))?;
            made.check(lua).map_err(|e| wrong("a table".into(), e))?;
            Ok(made)
        }
        other => Err(wrong(Describe(&other).to_string(), "return a table or the maker's result".into())),
    }
}
