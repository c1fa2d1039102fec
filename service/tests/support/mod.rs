//! Helpers shared by the listener tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

pub mod pki;
