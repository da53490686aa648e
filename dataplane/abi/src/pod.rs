//! `aya::Pod` for every table type, so the loader reads and writes them in maps.
#![allow(unsafe_code)]

use crate::bench::{PktgenConfig, PktgenHeaders, RedirectTo, SinkCount};
use crate::steer::{SteerConfig, SteerKey};
use crate::tables::*;

macro_rules! pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: `#[repr(C)]`, fixed-width integer and byte-array fields only, and
            // no implicit padding (each type asserts its size in `tables`).
            unsafe impl aya::Pod for $t {}
        )*
    };
}

pod!(
    SteerKey,
    SteerConfig,
    VipKey,
    VipInfo,
    VipAddrKey,
    SourceRangeKey,
    NextHopKey,
    NextHopValue,
    BackendInfo,
    FlowKey,
    FlowEntry,
    AffinityKey,
    AffinityEntry,
    Settings,
    Stats,
    PktgenConfig,
    PktgenHeaders,
    SinkCount,
    RedirectTo,
);
