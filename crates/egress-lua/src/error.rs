//! Errors a policy author meets, written to teach.

use mlua::{Lua, LuaSerdeExt, Value};
use std::fmt;

/// A policy failed to load or to answer an event.
///
/// Cloneable (messages are text) so that one failed load can be handed to every
/// caller that waited on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("cannot read policy {path}: {message}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
    /// The policy did not compile or its top level raised an error.
    #[error("policy {path} failed to load: {message}")]
    Load {
        /// The file (or `<string>`).
        path: String,
        /// Lua's message, with `file:line`.
        message: String,
    },
    /// A handler refused the message (`kumo.reject(code, text)`): the client's
    /// reply.
    #[error("{event} rejected the message: {rejection}")]
    Rejected {
        /// The event.
        event: &'static str,
        /// The reply.
        #[source]
        rejection: egress_policy::Rejection,
    },
    /// A handler raised an error.
    #[error("{event}({args}) raised an error: {message}")]
    Runtime {
        /// The event.
        event: &'static str,
        /// The arguments, quoted.
        args: String,
        /// Lua's message with `file:line` and traceback.
        message: String,
    },
    /// A handler returned nil.
    #[error("{event}({args}) returned nil; the handler must return its result, e.g. `return {example}` (a missing `return` is the usual cause)")]
    ReturnedNil {
        /// The event.
        event: &'static str,
        /// The arguments, quoted.
        args: String,
        /// What the return should look like.
        example: String,
    },
    /// A handler returned something that is not a definition of the right kind.
    #[error("{event}({args}) returned {got}; expected the result of {maker} (a table of its fields also works): {detail}")]
    WrongReturn {
        /// The event.
        event: &'static str,
        /// The arguments, quoted.
        args: String,
        /// What it returned.
        got: String,
        /// `kumo.make_egress_source`, …
        maker: &'static str,
        /// The conversion error.
        detail: String,
    },
    /// A handler that must answer yes or no returned something else.
    #[error("{event}({args}) returned {got}; expected true (accept) or false (refuse)")]
    NotBoolean {
        /// The event.
        event: &'static str,
        /// The arguments, quoted (secrets hidden).
        args: String,
        /// What it returned.
        got: String,
    },
    /// No handler for an event that has no default.
    #[error("no handler for '{event}' (needed for {args}); add `kumo.on('{event}', function(...) ... end)` to the policy")]
    MissingHandler {
        /// The event.
        event: &'static str,
        /// The arguments, quoted.
        args: String,
    },
    /// A handler ran past the policy time limit and was interrupted.
    #[error("{event}({args}) did not return within {limit_text} (the policy time limit) and was interrupted; look for a loop or a slow call in the handler")]
    TimeLimit {
        /// The event.
        event: &'static str,
        /// The arguments, quoted.
        args: String,
        /// The limit.
        limit: std::time::Duration,
        /// The limit in words.
        limit_text: String,
    },
    /// The policy machinery itself failed (a worker thread panicked).
    #[error("policy engine failure: {0}")]
    Internal(String),
}

/// Lua's error text: the message (with `file:line`) and the traceback, without
/// mlua's wrapper words.
/// The `kumo.reject` inside a handler's error, if that is what it is.
pub(crate) fn rejection_in(err: &mlua::Error) -> Option<egress_policy::Rejection> {
    match err {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            rejection_in(cause)
        }
        mlua::Error::ExternalError(e) => e.downcast_ref::<egress_policy::Rejection>().cloned(),
        _ => None,
    }
}

pub(crate) fn lua_message(err: &mlua::Error) -> String {
    match err {
        mlua::Error::CallbackError { traceback, cause } => {
            let cause = lua_message(cause);
            if cause.contains("stack traceback:") {
                cause
            } else {
                format!("{cause}\n{traceback}")
            }
        }
        mlua::Error::RuntimeError(msg) | mlua::Error::SyntaxError { message: msg, .. } => {
            msg.clone()
        }
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", lua_message(cause)),
        mlua::Error::ExternalError(e) => e.to_string(),
        other => other.to_string(),
    }
}

/// A conversion error's text without mlua's "deserialize error:" prefixes, which
/// nest once per table level and say nothing to a policy author.
pub(crate) fn serde_message(err: &mlua::Error) -> String {
    let text = match err {
        mlua::Error::DeserializeError(msg) => msg.clone(),
        other => other.to_string(),
    };
    text.replace("deserialize error: ", "")
}

/// Quotes call arguments for messages: `'ip-1', nil`.
pub(crate) fn quote_args(args: &[Option<&str>]) -> String {
    args.iter()
        .map(|a| match a {
            Some(s) => format!("'{s}'"),
            None => "nil".to_owned(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A short description of a Lua value for messages ("a number (10)").
pub(crate) struct Describe<'a>(pub &'a mlua::Value);

impl fmt::Display for Describe<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.0 {
            mlua::Value::Nil => f.write_str("nil"),
            mlua::Value::Boolean(b) => write!(f, "a boolean ({b})"),
            mlua::Value::Integer(n) => write!(f, "a number ({n})"),
            mlua::Value::Number(n) => write!(f, "a number ({n})"),
            mlua::Value::String(s) => write!(f, "a string ({:?})", s.to_string_lossy()),
            mlua::Value::Table(_) => f.write_str("a table"),
            mlua::Value::Function(_) => f.write_str("a function"),
            mlua::Value::UserData(_) => f.write_str("a userdata of another kind"),
            other => write!(f, "a {}", other.type_name()),
        }
    }
}

/// A runtime error prefixed with the `file:line` of the Lua code that called us.
pub(crate) fn located(lua: &mlua::Lua, message: String) -> mlua::Error {
    let place = lua.inspect_stack(1).and_then(|frame| {
        let line = frame.curr_line();
        let src = frame.source().short_src.map(|s| s.into_owned())?;
        (line > 0).then(|| format!("{src}:{line}: "))
    });
    mlua::Error::runtime(format!("{}{message}", place.unwrap_or_default()))
}

/// Converts a Lua value with serde; errors name the function and the caller's line.
pub(crate) fn from_lua<T: serde::de::DeserializeOwned>(
    lua: &Lua,
    value: Value,
    function: &str,
) -> mlua::Result<T> {
    if !value.is_table() {
        return Err(located(
            lua,
            format!(
                "{function} expects a table of fields, got {}",
                Describe(&value)
            ),
        ));
    }
    lua.from_value(value)
        .map_err(|e| located(lua, format!("{function}: {}", serde_message(&e))))
}
