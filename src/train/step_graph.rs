//! A training step as one graph ([`crate::device::graph`]): [`capture_store_step`] captures a
//! step that updates a [`ParamStore`] so that every replay reads the store's current tensors and
//! leaves the new values in those same buffers.
//!
//! The step itself stays as it is eagerly: it may replace store entries with new tensors (the
//! optimizer's copy-on-write, BatchNorm's new running statistics). At the end of the capture
//! each replaced entry is copied back into the buffer it had before (a device copy inside the
//! graph) and the store is given that tensor back, so the addresses the graph reads are the ones
//! it writes. Values the caller wants from the step (its loss, its correct count) are copied the
//! same way into output tensors allocated before the capture; its inputs are tensors the caller
//! refills before each replay ([`crate::device::Gpu::copy_into`] / `upload_into`).

use crate::device::graph::StepGraph;
use crate::device::Elem;
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::{IndexTensor, Tensor};

/// The tensors a captured step writes on every replay: values (the loss) and counts (the
/// correct predictions), allocated before the capture.
#[derive(Default)]
pub struct StepOutputs {
    /// f32 results.
    pub values: Vec<Tensor>,
    /// i32 results.
    pub counts: Vec<IndexTensor>,
}

impl StepOutputs {
    /// Outputs that are all f32 values.
    pub fn values(values: Vec<Tensor>) -> StepOutputs {
        StepOutputs {
            values,
            counts: Vec::new(),
        }
    }
}

/// Capture `step` on `gpu` (nothing runs: launch the returned step to run it). `outputs`
/// (allocated before, kept by the returned [`CapturedStep`]) receive, in order, the tensors the
/// step returns (same kinds, counts and shapes). Every store entry and output
/// must be held by nobody else (a replay writes them in place). After an error the device is out
/// of capture mode and `store` holds its tensors from before the call.
pub fn capture_store_step(
    gpu: &Gpu,
    store: &mut ParamStore,
    mut outputs: StepOutputs,
    step: impl FnOnce(&mut ParamStore) -> Result<StepOutputs>,
) -> Result<CapturedStep> {
    if let Some((name, _)) = store.iter().find(|(_, p)| !p.value.is_unique()) {
        return Err(shared(name));
    }
    // Held through the capture: the step may drop the store's handles, and a buffer from before
    // the capture must not be freed inside it.
    let mut kept: Vec<(String, Option<Tensor>)> = store
        .iter()
        .map(|(name, p)| (name.to_string(), Some(p.value.clone())))
        .collect();
    gpu.begin_capture()?;
    let captured = step(store).and_then(|results| {
        write_results(gpu, &results.values, &mut outputs.values)?;
        write_results(gpu, &results.counts, &mut outputs.counts)?;
        drop(results);
        write_back(gpu, store, &mut kept)
    });
    if let Err(e) = captured {
        gpu.abort_capture();
        for (name, value) in kept {
            if let Some(value) = value {
                store.get_mut(&name)?.value = value;
            }
        }
        return Err(e);
    }
    Ok(CapturedStep {
        graph: gpu.end_capture()?,
        outputs,
    })
}

/// A captured step and the output tensors its replays write: owned together, so an output
/// cannot be freed while the graph still writes it.
pub struct CapturedStep {
    graph: StepGraph,
    outputs: StepOutputs,
}

impl CapturedStep {
    /// Run the step once more: one graph launch.
    pub fn launch(&self, gpu: &Gpu) -> Result<()> {
        self.graph.launch(gpu)
    }

    /// Kernel launches one replay stands for.
    pub fn kernels(&self) -> usize {
        self.graph.kernels()
    }

    /// The step's results, overwritten by every replay (read them before the next one; a clone
    /// shares the buffer, so copy what must be kept).
    pub fn outputs(&self) -> &StepOutputs {
        &self.outputs
    }
}

/// Whether a store is still as a [`CapturedStep`] captured it: each entry held by the store alone, at the
/// address it had (a replay writes there). Check before every replay.
pub fn store_unchanged(gpu: &Gpu, store: &ParamStore, addresses: &[u64]) -> bool {
    store.len() == addresses.len()
        && store
            .iter()
            .zip(addresses)
            .all(|((_, p), &a)| p.value.is_unique() && gpu.addr(p.value.buffer()) == a)
}

/// The buffer address of every store entry, in order (what [`store_unchanged`] compares).
pub fn store_addresses(gpu: &Gpu, store: &ParamStore) -> Vec<u64> {
    store
        .iter()
        .map(|(_, p)| gpu.addr(p.value.buffer()))
        .collect()
}

fn shared(what: &str) -> Error {
    Error::Device(format!(
        "`{what}` is shared with another tensor, so a step graph cannot update it in place"
    ))
}

fn write_results<T: Elem>(
    gpu: &Gpu,
    results: &[Tensor<T>],
    outputs: &mut [Tensor<T>],
) -> Result<()> {
    if results.len() != outputs.len() {
        return Err(Error::Device(format!(
            "a captured step returned {} tensors for {} outputs",
            results.len(),
            outputs.len()
        )));
    }
    for (r, out) in results.iter().zip(outputs.iter_mut()) {
        if r.shape() != out.shape() {
            return Err(Error::Shape(format!(
                "a captured step's result {:?} for an output {:?}",
                r.shape(),
                out.shape()
            )));
        }
        copy_in_place(gpu, r, out, "an output of the step")?;
    }
    Ok(())
}

/// Every store entry the step replaced: the store gets its old tensor back, with the new values
/// copied into it.
fn write_back(
    gpu: &Gpu,
    store: &mut ParamStore,
    kept: &mut [(String, Option<Tensor>)],
) -> Result<()> {
    for (name, slot) in kept.iter_mut() {
        let p = store.get_mut(name)?;
        let Some(old) = slot.take() else { continue };
        if gpu.addr(p.value.buffer()) == gpu.addr(old.buffer()) {
            continue;
        }
        if p.value.shape() != old.shape() {
            return Err(Error::Shape(format!(
                "`{name}` changed shape in a captured step: {:?} → {:?}",
                old.shape(),
                p.value.shape()
            )));
        }
        let new = std::mem::replace(&mut p.value, old);
        copy_in_place(gpu, &new, &mut p.value, name)?;
    }
    Ok(())
}

/// `src` into `dst`'s own buffer, which must not move: the graph holds its address.
fn copy_in_place<T: Elem>(
    gpu: &Gpu,
    src: &Tensor<T>,
    dst: &mut Tensor<T>,
    what: &str,
) -> Result<()> {
    if !dst.is_unique() {
        return Err(shared(what));
    }
    gpu.copy_into(src.buffer(), dst.try_buffer_mut()?)
}
