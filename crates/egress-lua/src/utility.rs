//! The utility API real policies call besides the `make_*` functions, with
//! KumoMTA's names: `kumo.serde.*` (and the older `kumo.json_*`, `kumo.toml_*`),
//! `kumo.regex`, `kumo.memoize`, `kumo.traceback`, `kumo.sleep`,
//! `kumo.validation_failed`. Anything else called on `kumo` gets an error naming
//! the function (`unprovided`).

use crate::error::located;
use egress_cache::{HasTtl, TtlCache};
use futures::executor::block_on;
use mlua::{Function, Lua, LuaSerdeExt, MultiValue, Table, UserData, UserDataMethods, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What `kumo.validation_failed()` records, read by `egressd check --validate`.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ValidationFailed(pub bool);

/// Installs the utility functions into `kumo`.
pub(crate) fn install(lua: &Lua, kumo: &Table, memo: Arc<Memo>) -> mlua::Result<()> {
    let serde = lua.create_table()?;
    for (name, f) in [
        ("json_load", lua.create_function(json_load)?),
        ("json_parse", lua.create_function(json_parse)?),
        (
            "json_encode",
            lua.create_function(|lua, v: Value| encode(lua, v, "json_encode", Format::Json))?,
        ),
        (
            "json_encode_pretty",
            lua.create_function(|lua, v: Value| {
                encode(lua, v, "json_encode_pretty", Format::JsonPretty)
            })?,
        ),
        ("toml_load", lua.create_function(toml_load)?),
        ("toml_parse", lua.create_function(toml_parse)?),
        (
            "toml_encode",
            lua.create_function(|lua, v: Value| encode(lua, v, "toml_encode", Format::Toml))?,
        ),
        (
            "toml_encode_pretty",
            lua.create_function(|lua, v: Value| {
                encode(lua, v, "toml_encode_pretty", Format::TomlPretty)
            })?,
        ),
        ("yaml_load", lua.create_function(yaml_load)?),
        ("yaml_parse", lua.create_function(yaml_parse)?),
    ] {
        // The older names live on `kumo` itself (KumoMTA kept them).
        if !name.starts_with("yaml") {
            kumo.set(name, f.clone())?;
        }
        serde.set(name, f)?;
    }
    unprovided(lua, &serde, "kumo.serde")?;
    kumo.set("serde", serde)?;

    let regex = lua.create_table()?;
    regex.set(
        "compile",
        lua.create_function(|lua, pattern: String| {
            regex::Regex::new(&pattern)
                .map(Regex)
                .map_err(|e| located(lua, format!("kumo.regex.compile: {e}")))
        })?,
    )?;
    regex.set(
        "escape",
        lua.create_function(|_, text: String| Ok(regex::escape(&text)))?,
    )?;
    unprovided(lua, &regex, "kumo.regex")?;
    kumo.set("regex", regex)?;

    kumo.set(
        "memoize",
        lua.create_function(move |lua, (f, params): (Function, Table)| {
            memoize(lua, &memo, f, params)
        })?,
    )?;
    kumo.set("traceback", lua.create_function(traceback)?)?;
    kumo.set(
        "sleep",
        lua.create_function(|lua, seconds: f64| {
            if !(0.0..=3600.0).contains(&seconds) {
                return Err(located(
                    lua,
                    format!("kumo.sleep: {seconds} seconds; expected 0 to 3600"),
                ));
            }
            // Handlers run on blocking threads: sleeping holds one Lua state, not
            // the runtime (and the policy time limit still applies).
            std::thread::sleep(Duration::from_secs_f64(seconds));
            Ok(())
        })?,
    )?;
    kumo.set(
        "validation_failed",
        lua.create_function(|lua, ()| {
            lua.set_app_data(ValidationFailed(true));
            Ok(())
        })?,
    )?;
    Ok(())
}

/// Makes `table.anything(...)` (an unknown name) raise an error naming it, instead
/// of Lua's "attempt to call a nil value".
pub(crate) fn unprovided(lua: &Lua, table: &Table, prefix: &'static str) -> mlua::Result<()> {
    let meta = lua.create_table()?;
    meta.set(
        "__index",
        lua.create_function(move |lua, (_, key): (Table, Value)| {
            missing(lua, format!("{prefix}.{}", key_name(&key)))
        })?,
    )?;
    table.set_metatable(Some(meta));
    Ok(())
}

fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.to_string_lossy(),
        other => format!("{other:?}"),
    }
}

/// What `name` (`kumo.dkim`, `kumo.dkim.rsa_sha256_signer`, …) stands for when
/// egressd lacks it: calling it, or anything under it, raises an error that names
/// the missing function — a whole namespace (`kumo.dkim`) included, so
/// `kumo.dkim.rsa_sha256_signer(…)` says what is missing instead of "attempt to
/// index a function value".
fn missing(lua: &Lua, name: String) -> mlua::Result<Table> {
    let stand_in = lua.create_table()?;
    let meta = lua.create_table()?;
    let called = name.clone();
    meta.set(
        "__call",
        lua.create_function(move |lua, _: MultiValue| -> mlua::Result<()> {
            Err(located(
                lua,
                format!(
                    "{called} is not provided by egressd (it implements the subset of KumoMTA's API documented in its README)"
                ),
            ))
        })?,
    )?;
    meta.set(
        "__index",
        lua.create_function(move |lua, (_, key): (Table, Value)| {
            missing(lua, format!("{name}.{}", key_name(&key)))
        })?,
    )?;
    stand_in.set_metatable(Some(meta));
    Ok(stand_in)
}

fn read(lua: &Lua, function: &str, path: &str) -> mlua::Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| located(lua, format!("{function}: cannot read {path}: {e}")))
}

fn to_lua(lua: &Lua, value: &serde_json::Value) -> mlua::Result<Value> {
    lua.to_value_with(
        value,
        mlua::SerializeOptions::new().serialize_none_to_null(false),
    )
}

fn json_load(lua: &Lua, path: String) -> mlua::Result<Value> {
    let text = read(lua, "kumo.json_load", &path)?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        located(
            lua,
            format!("kumo.json_load: {path} is not valid JSON: {e}"),
        )
    })?;
    to_lua(lua, &value)
}

fn json_parse(lua: &Lua, text: String) -> mlua::Result<Value> {
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| located(lua, format!("kumo.json_parse: not valid JSON: {e}")))?;
    to_lua(lua, &value)
}

/// TOML text to Lua; `what` names the file (or "text") in errors, which carry
/// the line and column.
fn toml_value(lua: &Lua, function: &str, what: &str, text: &str) -> mlua::Result<Value> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let place = e
            .span()
            .map(|span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
                format!("{what}:{line}:{column}: ")
            })
            .unwrap_or_else(|| format!("{what}: "));
        located(lua, format!("{function}: {place}{}", e.message()))
    })?;
    let value = serde_json::to_value(&table)
        .map_err(|e| located(lua, format!("{function}: {what}: {e}")))?;
    to_lua(lua, &value)
}

fn toml_load(lua: &Lua, path: String) -> mlua::Result<Value> {
    let text = read(lua, "kumo.toml_load", &path)?;
    toml_value(lua, "kumo.toml_load", &path, &text)
}

fn toml_parse(lua: &Lua, text: String) -> mlua::Result<Value> {
    toml_value(lua, "kumo.toml_parse", "text", &text)
}

/// YAML's first document to Lua (yaml-rust2 parses; the value goes through JSON).
fn yaml_value(lua: &Lua, function: &str, what: &str, text: &str) -> mlua::Result<Value> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text)
        .map_err(|e| located(lua, format!("{function}: {what}: {e}")))?;
    let value = docs
        .first()
        .map(yaml_to_json)
        .unwrap_or(serde_json::Value::Null);
    to_lua(lua, &value)
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> serde_json::Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::Real(r) => r
            .parse::<f64>()
            .map(serde_json::Value::from)
            .unwrap_or(serde_json::Value::Null),
        Yaml::Integer(i) => (*i).into(),
        Yaml::String(s) => s.clone().into(),
        Yaml::Boolean(b) => (*b).into(),
        Yaml::Array(a) => a.iter().map(yaml_to_json).collect(),
        Yaml::Hash(h) => h
            .iter()
            .map(|(k, v)| {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    other => match yaml_to_json(other) {
                        serde_json::Value::String(s) => s,
                        v => v.to_string(),
                    },
                };
                (key, yaml_to_json(v))
            })
            .collect::<serde_json::Map<_, _>>()
            .into(),
        Yaml::Alias(_) | Yaml::Null | Yaml::BadValue => serde_json::Value::Null,
    }
}

fn yaml_load(lua: &Lua, path: String) -> mlua::Result<Value> {
    let text = read(lua, "kumo.serde.yaml_load", &path)?;
    yaml_value(lua, "kumo.serde.yaml_load", &path, &text)
}

fn yaml_parse(lua: &Lua, text: String) -> mlua::Result<Value> {
    yaml_value(lua, "kumo.serde.yaml_parse", "text", &text)
}

enum Format {
    Json,
    JsonPretty,
    Toml,
    TomlPretty,
}

/// A Lua value as JSON data: a table whose keys are exactly 1..n is an array,
/// any other table an object with its keys as strings (`{[10] = 'a'}` becomes
/// `{"10": "a"}`); functions and userdata are refused.
fn to_json(value: &Value, depth: usize) -> Result<serde_json::Value, String> {
    if depth > 64 {
        return Err("nested more than 64 levels (a table that contains itself?)".into());
    }
    Ok(match value {
        Value::Nil => serde_json::Value::Null,
        Value::Boolean(b) => (*b).into(),
        Value::Integer(i) => (*i).into(),
        Value::Number(n) => serde_json::Number::from_f64(*n)
            .map(serde_json::Value::Number)
            .ok_or_else(|| format!("{n} has no JSON form"))?,
        Value::String(s) => s.to_string_lossy().into(),
        Value::Table(t) => {
            let len = t.raw_len();
            let pairs: Vec<(Value, Value)> = t
                .clone()
                .pairs::<Value, Value>()
                .collect::<mlua::Result<_>>()
                .map_err(|e| e.to_string())?;
            if len > 0 && pairs.len() == len {
                let mut items = Vec::with_capacity(len);
                for i in 1..=len {
                    items.push(to_json(
                        &t.raw_get::<Value>(i).map_err(|e| e.to_string())?,
                        depth + 1,
                    )?);
                }
                serde_json::Value::Array(items)
            } else {
                let mut map = serde_json::Map::new();
                for (k, v) in pairs {
                    let key = match &k {
                        Value::String(s) => s.to_string_lossy(),
                        Value::Integer(i) => i.to_string(),
                        Value::Number(n) => n.to_string(),
                        Value::Boolean(b) => b.to_string(),
                        other => {
                            return Err(format!(
                                "a table key of type {} has no JSON form",
                                other.type_name()
                            ))
                        }
                    };
                    map.insert(key, to_json(&v, depth + 1)?);
                }
                serde_json::Value::Object(map)
            }
        }
        other => return Err(format!("a {} has no JSON form", other.type_name())),
    })
}

fn encode(lua: &Lua, value: Value, function: &str, format: Format) -> mlua::Result<String> {
    let json = to_json(&value, 0).map_err(|e| located(lua, format!("kumo.{function}: {e}")))?;
    let text = match format {
        Format::Json => serde_json::to_string(&json).map_err(|e| e.to_string()),
        Format::JsonPretty => serde_json::to_string_pretty(&json).map_err(|e| e.to_string()),
        Format::Toml => toml::to_string(&json).map_err(|e| e.to_string()),
        Format::TomlPretty => toml::to_string_pretty(&json).map_err(|e| e.to_string()),
    };
    text.map_err(|e| located(lua, format!("kumo.{function}: {e}")))
}

/// `kumo.regex.compile(PATTERN)`: a compiled regular expression (the regex crate's
/// syntax, as KumoMTA's).
struct Regex(regex::Regex);

impl UserData for Regex {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("is_match", |_, re, text: String| Ok(re.0.is_match(&text)));
        methods.add_method("find", |_, re, text: String| {
            Ok(re.0.find(&text).map(|m| m.as_str().to_owned()))
        });
        methods.add_method("find_all", |_, re, text: String| {
            Ok(re
                .0
                .find_iter(&text)
                .map(|m| m.as_str().to_owned())
                .collect::<Vec<_>>())
        });
        methods.add_method("captures", |lua, re, text: String| {
            let Some(caps) = re.0.captures(&text) else {
                return Ok(Value::Nil);
            };
            let t = lua.create_table()?;
            for (i, m) in caps.iter().enumerate() {
                if let Some(m) = m {
                    t.set(i, m.as_str())?;
                }
            }
            for name in re.0.capture_names().flatten() {
                if let Some(m) = caps.name(name) {
                    t.set(name, m.as_str())?;
                }
            }
            Ok(Value::Table(t))
        });
        methods.add_method("replace", |_, re, (text, with): (String, String)| {
            Ok(re.0.replace(&text, with.as_str()).into_owned())
        });
        methods.add_method("replace_all", |_, re, (text, with): (String, String)| {
            Ok(re.0.replace_all(&text, with.as_str()).into_owned())
        });
        methods.add_method("split", |_, re, text: String| {
            Ok(re.0.split(&text).map(str::to_owned).collect::<Vec<_>>())
        });
    }
}

/// A memoized result, with the time it may be kept.
#[derive(Clone)]
struct Memoized {
    value: serde_json::Value,
    ttl: Duration,
}

impl HasTtl for Memoized {
    fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// `kumo.memoize` caches, one egress-cache `TtlCache` per name, shared by every
/// Lua state of a policy load (so a result computed in one is found by all).
#[derive(Default)]
pub(crate) struct Memo {
    caches: Mutex<HashMap<String, TtlCache<String, Memoized>>>,
}

fn memoize(lua: &Lua, memo: &Arc<Memo>, f: Function, params: Table) -> mlua::Result<Function> {
    let name: String = params.get::<Option<String>>("name")?.ok_or_else(|| {
        located(
            lua,
            "kumo.memoize: `name` is required (the cache's name)".into(),
        )
    })?;
    let ttl_text: Value = params.get("ttl")?;
    let ttl = match ttl_text {
        Value::String(s) => egress_source::parse_duration(&s.to_string_lossy())
            .map_err(|e| located(lua, format!("kumo.memoize {name}: ttl: {e}")))?,
        Value::Integer(n) if n >= 0 => Duration::from_secs(n as u64),
        Value::Number(n) if n >= 0.0 => Duration::from_secs_f64(n),
        other => {
            return Err(located(
                lua,
                format!(
                    "kumo.memoize {name}: ttl: expected a duration such as '5 minutes', got {}",
                    crate::error::Describe(&other)
                ),
            ))
        }
    };
    let capacity: u64 = params.get::<Option<u64>>("capacity")?.unwrap_or(1024);
    let cache = memo
        .caches
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.clone())
        .or_insert_with(|| TtlCache::new(capacity))
        .clone();
    lua.create_function(move |lua, args: MultiValue| {
        let key: Vec<serde_json::Value> = args
            .iter()
            .map(|a| lua.from_value(a.clone()))
            .collect::<Result<_, _>>()
            .map_err(|e| {
                located(
                    lua,
                    format!("kumo.memoize {name}: arguments must be plain data: {e}"),
                )
            })?;
        let key = serde_json::Value::Array(key).to_string();
        // egress-cache is async (moka); a Lua call is synchronous, on a blocking
        // thread (or the load), so its futures are driven right here.
        if let Some(hit) = block_on(cache.get(&key)) {
            return to_lua(lua, &hit.value);
        }
        let result: Value = f.call(args)?;
        let value: serde_json::Value = lua.from_value(result.clone()).map_err(|e| {
            located(
                lua,
                format!("kumo.memoize {name}: the result must be plain data: {e}"),
            )
        })?;
        let stored = Memoized { value, ttl };
        let _ = block_on(cache.get_or_load(key, || async move {
            Ok::<_, std::convert::Infallible>(stored)
        }));
        Ok(result)
    })
}

/// `kumo.traceback(LEVEL)`: the call stack from `LEVEL` (default 1) up, as a list
/// of `{ name, source, line, what }` frames.
fn traceback(lua: &Lua, level: Option<usize>) -> mlua::Result<Table> {
    let frames = lua.create_table()?;
    let mut level = level.unwrap_or(1);
    let mut i = 1;
    while let Some(debug) = lua.inspect_stack(level) {
        // KumoMTA's frame fields (and `line`, which egressd gave before).
        let frame = lua.create_table()?;
        frame.set(
            "event",
            match debug.event() {
                mlua::DebugEvent::Call => "Call",
                mlua::DebugEvent::Ret => "Ret",
                mlua::DebugEvent::TailCall => "TailCall",
                mlua::DebugEvent::Line => "Line",
                mlua::DebugEvent::Count => "Count",
                _ => "Unknown",
            },
        )?;
        let names = debug.names();
        frame.set("name", names.name.map(|n| n.into_owned()))?;
        frame.set("name_what", names.name_what)?;
        let source = debug.source();
        frame.set("source", source.source.map(|s| s.into_owned()))?;
        frame.set("short_src", source.short_src.map(|s| s.into_owned()))?;
        frame.set("line_defined", source.line_defined)?;
        frame.set("last_line_defined", source.last_line_defined)?;
        frame.set("what", source.what)?;
        frame.set("curr_line", debug.curr_line())?;
        frame.set("line", debug.curr_line())?;
        frame.set("is_tail_call", debug.is_tail_call())?;
        frames.set(i, frame)?;
        i += 1;
        level += 1;
    }
    Ok(frames)
}
