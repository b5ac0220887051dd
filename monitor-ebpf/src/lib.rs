#![no_std]
// Empty: the programs are in the `monitor` binary target (src/main.rs).
