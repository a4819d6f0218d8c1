//! `kumo.dkim`: KumoMTA's signer constructors over egress-dkim, and the knob for
//! signing threads.

use crate::declarations::declare;
use crate::error::from_lua;
use egress_dkim::{KeyKind, Signer, SignerParams, Signers};
use mlua::{Lua, Table, UserData, Value};
use std::sync::{Arc, OnceLock};

/// A signer as Lua holds it (`msg:dkim_sign(signer)` takes it).
#[derive(Clone)]
pub(crate) struct DkimSigner(pub Arc<Signer>);

impl UserData for DkimSigner {}

/// Signers are kept across Lua states and reloads for their `ttl` (KumoMTA's
/// signer cache): a key is read once, not per message.
fn signers() -> &'static Signers {
    static SIGNERS: OnceLock<Signers> = OnceLock::new();
    SIGNERS.get_or_init(Signers::default)
}

fn constructor(lua: &Lua, kind: KeyKind, name: &'static str) -> mlua::Result<mlua::Function> {
    lua.create_function(move |lua, params: Value| {
        let params: SignerParams = from_lua(lua, params, name)?;
        let signer = signers()
            .get(kind, params)
            .map_err(|e| crate::error::located(lua, format!("{name}: {e}")))?;
        Ok(DkimSigner(signer))
    })
}

/// Installs `kumo.dkim`.
pub(crate) fn install(lua: &Lua, kumo: &Table) -> mlua::Result<()> {
    let dkim = lua.create_table()?;
    dkim.set(
        "rsa_sha256_signer",
        constructor(lua, KeyKind::Rsa, "kumo.dkim.rsa_sha256_signer")?,
    )?;
    dkim.set(
        "ed25519_signer",
        constructor(lua, KeyKind::Ed25519, "kumo.dkim.ed25519_signer")?,
    )?;
    // Signing runs in smtp_server_message_received, on the policy's own threads
    // (never the session tasks); their number is the Lua state pool's. The call is
    // accepted so KumoMTA policies load, and recorded for `egressd check`.
    dkim.set(
        "set_signing_threads",
        lua.create_function(|lua, n: usize| declare(lua, |init| init.signing_threads = Some(n)))?,
    )?;
    crate::utility::unprovided(lua, &dkim, "kumo.dkim")?;
    kumo.set("dkim", dkim)
}
