//! Which entries of a [`ParamStore`] an optimizer step (or a gradient clip) touches, checked once
//! for every optimizer: trainable parameters that have a gradient, as PyTorch steps exactly the
//! parameters whose `.grad` is not None.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::nn::{EntryKind, Param, ParamStore};
use crate::tensor::Tensor;

/// One trainable parameter with its gradient, checked: same shape, same device, below 2^31
/// elements (the kernels' 32-bit indexing).
pub struct Stepped<'s> {
    /// The parameter's name in the store.
    pub name: &'s str,
    /// Its weights (updated in place).
    pub w: &'s mut Tensor,
    /// Its gradient (mutable for clipping; optimizers only read it).
    pub grad: &'s mut Tensor,
}

/// Every trainable parameter of `store` with a gradient, in store order; buffers, frozen
/// parameters and parameters without a gradient are left out. `what` names the caller in errors.
pub fn stepped_params<'s>(what: &str, store: &'s mut ParamStore) -> Result<Vec<Stepped<'s>>> {
    let mut out = Vec::new();
    for (name, p) in store.iter_mut() {
        let Param {
            value,
            grad,
            kind,
            trainable,
        } = p;
        if *kind == EntryKind::Buffer || !*trainable {
            continue;
        }
        let Some(grad) = grad.as_mut() else { continue };
        grad.expect_shape(&format!("{what}: gradient of `{name}`"), value.shape())?;
        check_device(what, name, "gradient", grad.device(), value.device())?;
        if value.numel() > i32::MAX as usize {
            return Err(Error::op_arg(
                what,
                format!("`{name}` has {} elements, above 2^31 - 1", value.numel()),
            ));
        }
        out.push(Stepped {
            name,
            w: value,
            grad,
        });
    }
    Ok(out)
}

/// Fails when `found` (the device of the parameter's `thing`) is not the parameter's `device`.
pub fn check_device(
    what: &str,
    name: &str,
    thing: &str,
    found: &Device,
    device: &Device,
) -> Result<()> {
    if found != device {
        return Err(Error::Device(format!(
            "{what}: the {thing} of `{name}` is on {}, the parameter on {}",
            found.name(),
            device.name()
        )));
    }
    Ok(())
}

/// Splits `sizes` (elements of consecutive tensors on one device) into index ranges of at most
/// `max_tensors` tensors and fewer than 2^31 elements each: one multi-tensor launch per range.
/// Empty tensors are never in a range (they have nothing to update).
pub fn launch_groups(sizes: &[usize], max_tensors: usize) -> Vec<Vec<usize>> {
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut elements = 0usize;
    for (i, &n) in sizes.iter().enumerate() {
        if n == 0 {
            continue;
        }
        match groups.last_mut() {
            Some(g) if g.len() < max_tensors && elements + n <= i32::MAX as usize => {
                g.push(i);
                elements += n;
            }
            _ => {
                groups.push(vec![i]);
                elements = n;
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_groups_split_by_count_and_skip_empty_tensors() {
        assert_eq!(
            launch_groups(&[3, 0, 2, 5, 1], 2),
            vec![vec![0, 2], vec![3, 4]]
        );
        assert_eq!(launch_groups(&[0, 0], 4), Vec::<Vec<usize>>::new());
        let big = i32::MAX as usize - 1;
        assert_eq!(launch_groups(&[big, 2, 1], 8), vec![vec![0], vec![1, 2]]);
    }
}
