//! The emu device: kernels/*.cu compiled as C++ against kernels/emu/, one fiber per CUDA thread.
//! PLACEHOLDER — being implemented.

use super::{EmuOrder, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};

pub struct EmuBackend {
    order: EmuOrder,
}

impl EmuBackend {
    pub fn new(order: EmuOrder) -> Result<Self> {
        Ok(EmuBackend { order })
    }
    pub fn order(&self) -> EmuOrder {
        self.order
    }
    pub fn launch(&self, kernel: &str, _cfg: LaunchCfg, _args: &mut KernelArgs) -> Result<()> {
        Err(Error::Launch {
            kernel: kernel.into(),
            msg: "emulator not built yet".into(),
        })
    }
}
