//! wasmtime's C API (every function of wasmtime-c-api-impl, re-exported) plus
//! `meshplug_config_compiler_inlining_set`: `Config::compiler_inlining`, which the C API does not expose.

use std::ffi::{c_char, CStr};

pub use wasmtime_c_api::*;

use wasmtime_c_api::wasmtime::{Config, Inlining};

// `wasm_config_t` is `#[repr(C)]` with the `Config` as its only field: a pointer to it is a pointer to that field.
const _: () = assert!(std::mem::size_of::<wasm_config_t>() == std::mem::size_of::<Config>());

/// Sets compiler inlining on `config` to `mode`, one of wasmtime's names ("yes", "no", "gc", "inter-module",
/// "intrinsics"). Returns false, changing nothing, for another name.
///
/// # Safety
/// `config` is a live `wasm_config_t` (not yet given to `wasm_engine_new_with_config`); `mode` a NUL-terminated
/// string.
#[no_mangle]
pub unsafe extern "C" fn meshplug_config_compiler_inlining_set(config: *mut wasm_config_t, mode: *const c_char) -> bool {
    let Ok(mode) = CStr::from_ptr(mode).to_str() else {
        return false;
    };
    let Ok(inlining) = mode.parse::<Inlining>() else {
        return false;
    };
    let config = &mut *config.cast::<Config>();
    config.compiler_inlining(inlining);
    true
}
