//! Out of device memory is an error value, never a panic: copy-on-write of a shared buffer
//! (in-place ops, optimizer updates) on an emulator whose allocations are cut off.

use lit_engine::device::emu::EmuBackend;
use lit_engine::device::{EmuOrder, Gpu, GpuBackend};
use lit_engine::ops::elementwise;
use lit_engine::{Device, Error, Tensor};
use std::sync::Arc;

/// An emulator that fails allocations once they have taken `bytes` in all.
fn emu_with_budget(bytes: usize) -> Device {
    let backend = EmuBackend::new(EmuOrder::Forward)
        .unwrap()
        .with_alloc_budget(bytes);
    Device::Gpu(Arc::new(Gpu::new(GpuBackend::Emu(backend))))
}

#[test]
fn a_failed_copy_of_a_shared_buffer_is_a_device_error_and_leaves_the_tensor_as_it_was() {
    // Room for the tensor itself (4 f32), not for a copy of it.
    let dev = emu_with_budget(16);
    let mut y = Tensor::<f32>::from_vec(&[4], vec![1.0, 2.0, 3.0, 4.0], &dev).unwrap();
    let shared = y.clone();
    let err = y.try_buffer_mut().err().expect("the copy must fail");
    assert!(
        matches!(&err, Error::Device(msg) if msg.contains("out of memory")),
        "{err}"
    );
    assert_eq!(y.to_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
    assert_eq!(shared.to_vec().unwrap(), vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn an_in_place_op_on_a_shared_tensor_reports_out_of_memory_instead_of_panicking() {
    // Room for `y` and `x`, not for the copy `axpy` needs because `y` is shared.
    let dev = emu_with_budget(32);
    let mut y = Tensor::<f32>::from_vec(&[4], vec![1.0; 4], &dev).unwrap();
    let x = Tensor::<f32>::from_vec(&[4], vec![2.0; 4], &dev).unwrap();
    let shared = y.clone();
    let err = elementwise::axpy_inplace(&mut y, 0.5, &x).unwrap_err();
    assert!(matches!(err, Error::Device(_)), "{err}");
    assert_eq!(shared.to_vec().unwrap(), vec![1.0; 4]);
}

#[test]
fn an_unshared_buffer_is_updated_in_place_without_allocating() {
    let dev = emu_with_budget(32);
    let mut y = Tensor::<f32>::from_vec(&[4], vec![1.0; 4], &dev).unwrap();
    let x = Tensor::<f32>::from_vec(&[4], vec![2.0; 4], &dev).unwrap();
    elementwise::axpy_inplace(&mut y, 0.5, &x).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![2.0; 4]);
    // The copy-on-write path still works while the budget allows it.
    let dev = emu_with_budget(48);
    let mut y = Tensor::<f32>::from_vec(&[4], vec![1.0; 4], &dev).unwrap();
    let x = Tensor::<f32>::from_vec(&[4], vec![2.0; 4], &dev).unwrap();
    let shared = y.clone();
    elementwise::axpy_inplace(&mut y, 0.5, &x).unwrap();
    assert_eq!(y.to_vec().unwrap(), vec![2.0; 4]);
    assert_eq!(shared.to_vec().unwrap(), vec![1.0; 4]);
}
