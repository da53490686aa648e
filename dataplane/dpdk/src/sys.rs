//! The generated bindings (build.rs: bindgen over shim/shim.h against the installed DPDK
//! headers) and nothing else. Everything outside this module goes through the safe
//! wrappers of the other modules.

#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    improper_ctypes,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    clippy::pedantic
)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));
