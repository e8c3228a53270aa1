//! The cuda device: cudarc (dynamic loading) + NVRTC, with an on-disk module cache.
//! PLACEHOLDER — being implemented.

use super::{Elem, KernelArgs, LaunchCfg};
use crate::error::{Error, Result};
use cudarc::driver::CudaSlice;

pub struct CudaBackend {}

impl CudaBackend {
    pub fn new(_ordinal: usize) -> Result<Self> {
        Err(Error::Device("cuda backend not built yet".into()))
    }
    pub fn device_name(&self) -> String {
        String::new()
    }
    pub fn upload<T: Elem>(&self, _data: &[T]) -> Result<CudaSlice<T>> {
        Err(Error::Device("cuda backend not built yet".into()))
    }
    pub fn zeros<T: Elem>(&self, _n: usize) -> Result<CudaSlice<T>> {
        Err(Error::Device("cuda backend not built yet".into()))
    }
    pub fn download<T: Elem>(&self, _s: &CudaSlice<T>) -> Result<Vec<T>> {
        Err(Error::Device("cuda backend not built yet".into()))
    }
    pub fn raw_ptr<T: Elem>(_s: &CudaSlice<T>) -> u64 {
        0
    }
    pub fn launch(&self, kernel: &str, _cfg: LaunchCfg, _args: &mut KernelArgs) -> Result<()> {
        Err(Error::Launch {
            kernel: kernel.into(),
            msg: "cuda backend not built yet".into(),
        })
    }
    pub fn synchronize(&self) -> Result<()> {
        Ok(())
    }
}
