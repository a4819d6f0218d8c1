//! Lua table → model conversion, the path every `kumo.make_*` and every table a
//! handler returns takes: arbitrary JSON becomes a Lua value, mlua's deserializer
//! with our strict tables reads it as each definition, and validation runs. Never a
//! panic; errors name a field or say what was expected; a pool that validates
//! builds a selector or says why not.
#![no_main]

use egress_source::{EgressPathConfig, EgressPool, EgressSource, QueueConfig};
use libfuzzer_sys::fuzz_target;
use mlua::{Lua, LuaSerdeExt};

thread_local! {
    static LUA: Lua = Lua::new();
}

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    LUA.with(|lua| {
        let Ok(value) = lua.to_value(&json) else {
            return;
        };
        if let Ok(source) = lua.from_value::<EgressSource>(value.clone()) {
            if source.validate().is_ok() {
                let _ = serde_json::to_string(&source).expect("a valid source serializes");
            }
        }
        if let Ok(pool) = lua.from_value::<EgressPool>(value.clone()) {
            if pool.validate().is_ok() {
                if let Ok(wrr) = pool.selector() {
                    for _ in 0..4 {
                        let picked = wrr.pick();
                        assert!(pool
                            .entries
                            .iter()
                            .any(|e| &e.name == picked && e.weight > 0));
                    }
                }
            }
        }
        if let Ok(path) = lua.from_value::<EgressPathConfig>(value.clone()) {
            let _ = path.validate();
        }
        if let Ok(queue) = lua.from_value::<QueueConfig>(value) {
            let _ = queue.mx_list();
        }
    });
});
