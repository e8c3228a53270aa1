//! What the emulator's own tests share: an emu device per thread order, host addresses as
//! device addresses (emu memory is host memory), and a launch that panics with the kernel's name.

#![allow(dead_code)]

use lit_engine::device::{Device, EmuOrder, Gpu, KernelArgs, LaunchCfg};
use std::sync::Arc;

/// Every thread order: a missing barrier shows up in one of them.
pub const ORDERS: [EmuOrder; 3] = [EmuOrder::Forward, EmuOrder::Reverse, EmuOrder::Random];

/// The emulator with `order`.
pub fn emu(order: EmuOrder) -> Arc<Gpu> {
    match Device::emu_with_order(order).unwrap() {
        Device::Gpu(g) => g,
        Device::Cpu => unreachable!("the emu device is a Gpu"),
    }
}

/// A host buffer's address, which is its emu device address.
pub fn addr<T>(v: &mut [T]) -> u64 {
    v.as_mut_ptr() as u64
}

/// Launch `kernel`, panicking with its name and the device on failure.
pub fn launch(g: &Gpu, kernel: &str, cfg: LaunchCfg, args: &mut KernelArgs) {
    g.launch(kernel, cfg, args)
        .unwrap_or_else(|e| panic!("{kernel} on {}: {e}", g.name()));
}
