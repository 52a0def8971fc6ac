//! Graph nodes whose value is computed outside the graph and whose backward is written by hand, on every backend.
//!
//! candle's own composite ops keep every intermediate until the loss is dropped, and its backward computes (and
//! keeps, for the whole pass) a full-size gradient for each constant operand of an add or a multiply: a mask, a
//! rope table, a frozen norm weight, a detached maximum. A node built here keeps only its tracked inputs and its
//! output, and gives gradients to tracked inputs only. Its forward is one device copy of the value (candle's
//! custom ops must return fresh storage), which works on the CPU, CUDA and Metal alike.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use std::sync::Mutex;

/// The backward of a node of one input: `(input, output, output gradient) -> input gradient`.
pub type Backward1 = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Result<Option<Tensor>> + Send + Sync>;
/// The backward of a node of two inputs.
pub type Backward2 =
    Box<dyn Fn(&Tensor, &Tensor, &Tensor, &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> + Send + Sync>;
/// The backward of a node of three inputs.
pub type Backward3 = Box<dyn Fn([&Tensor; 3], &Tensor, &Tensor) -> Result<[Option<Tensor>; 3]> + Send + Sync>;

/// The value a node hands out once, from its forward pass; taken, so the node does not keep a second copy.
struct Value(Mutex<Option<Tensor>>);

impl Value {
    fn new(value: &Tensor) -> Result<Value> {
        Ok(Value(Mutex::new(Some(value.contiguous()?))))
    }

    /// The value's storage copied out (the node's output), and the value dropped.
    fn take<S>(&self, copy: impl FnOnce(&candle_core::Storage, &Layout) -> Result<S>) -> Result<(S, Shape)> {
        let value = self.0.lock().expect("node value").take();
        let Some(value) = value else {
            candle_core::bail!("a hand-written node was run twice")
        };
        let (storage, layout) = value.storage_and_layout();
        Ok((copy(&storage, layout)?, value.shape().clone()))
    }
}

macro_rules! forwards {
    ($($arg:ident),*) => {
        fn cpu_fwd(&self, $(_: &CpuStorage, $arg: &Layout),*) -> Result<(CpuStorage, Shape)> {
            $(let _ = $arg;)*
            self.value.take(|s, l| match s {
                candle_core::Storage::Cpu(s) => s.try_clone(l),
                _ => candle_core::bail!("{}: value and inputs on different devices", self.name),
            })
        }

        #[cfg(feature = "cuda")]
        fn cuda_fwd(
            &self,
            $(_: &candle_core::CudaStorage, $arg: &Layout),*
        ) -> Result<(candle_core::CudaStorage, Shape)> {
            $(let _ = $arg;)*
            self.value.take(|s, l| match s {
                candle_core::Storage::Cuda(s) => s.try_clone(l),
                _ => candle_core::bail!("{}: value and inputs on different devices", self.name),
            })
        }

        #[cfg(feature = "metal")]
        fn metal_fwd(
            &self,
            $(_: &candle_core::MetalStorage, $arg: &Layout),*
        ) -> Result<(candle_core::MetalStorage, Shape)> {
            $(let _ = $arg;)*
            self.value.take(|s, l| match s {
                candle_core::Storage::Metal(s) => s.try_clone(l),
                _ => candle_core::bail!("{}: value and inputs on different devices", self.name),
            })
        }
    };
}

struct Node1 {
    name: &'static str,
    value: Value,
    backward: Backward1,
}

impl CustomOp1 for Node1 {
    fn name(&self) -> &'static str {
        self.name
    }
    forwards!(l1);
    fn bwd(&self, arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        (self.backward)(arg, res, grad)
    }
}

struct Node2 {
    name: &'static str,
    value: Value,
    backward: Backward2,
}

impl CustomOp2 for Node2 {
    fn name(&self) -> &'static str {
        self.name
    }
    forwards!(l1, l2);
    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        (self.backward)(a, b, res, grad)
    }
}

struct Node3 {
    name: &'static str,
    value: Value,
    backward: Backward3,
}

impl CustomOp3 for Node3 {
    fn name(&self) -> &'static str {
        self.name
    }
    forwards!(l1, l2, l3);
    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        c: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [ga, gb, gc] = (self.backward)([a, b, c], res, grad)?;
        Ok((ga, gb, gc))
    }
}

/// `value` (computed from `input` without a graph) as a node of `input` with the given backward. Where `input`
/// records no graph, `value` itself is returned.
pub fn attach1(name: &'static str, input: &Tensor, value: Tensor, backward: Backward1) -> Result<Tensor> {
    if !input.track_op() {
        return Ok(value);
    }
    let op = Node1 {
        name,
        value: Value::new(&value.detach())?,
        backward,
    };
    input.apply_op1(op)
}

/// [`attach1`] for two inputs.
pub fn attach2(name: &'static str, a: &Tensor, b: &Tensor, value: Tensor, backward: Backward2) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Ok(value);
    }
    let op = Node2 {
        name,
        value: Value::new(&value.detach())?,
        backward,
    };
    a.apply_op2(b, op)
}

/// [`attach1`] for three inputs.
pub fn attach3(name: &'static str, inputs: [&Tensor; 3], value: Tensor, backward: Backward3) -> Result<Tensor> {
    if inputs.iter().all(|t| !t.track_op()) {
        return Ok(value);
    }
    let op = Node3 {
        name,
        value: Value::new(&value.detach())?,
        backward,
    };
    inputs[0].apply_op3(inputs[1], inputs[2], op)
}

/// `forward` of three inputs as one node that keeps only its inputs: its value comes from `forward` on detached
/// inputs (whose intermediates are freed at once), and its backward pass runs `forward` again on leaves of its own
/// and differentiates that, so the pass's intermediates exist for one such node at a time (a layer's delta rule,
/// a Mamba 2 scan).
pub fn recomputed3(
    name: &'static str,
    inputs: [&Tensor; 3],
    forward: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    let value = forward(&inputs[0].detach(), &inputs[1].detach(), &inputs[2].detach())?;
    let backward = move |inputs: [&Tensor; 3], _: &Tensor, grad: &Tensor| -> Result<[Option<Tensor>; 3]> {
        // Leaves of their own for the inputs that want gradients, so the recomputation's backward pass stops
        // here instead of running on into the model's graph below.
        let leaves = inputs.map(|x| match x.track_op() {
            true => candle_core::Var::from_tensor(&x.detach()).map(|v| Some(v.as_tensor().clone())),
            false => Ok(None),
        });
        let [a, b, c] = leaves;
        let (a, b, c) = (a?, b?, c?);
        let or_input = |leaf: &Option<Tensor>, i: usize| leaf.clone().unwrap_or_else(|| inputs[i].detach());
        let out = forward(&or_input(&a, 0), &or_input(&b, 1), &or_input(&c, 2))?;
        let grads = (out * grad.detach())?.sum_all()?.backward()?;
        let grad_of = |leaf: Option<Tensor>| leaf.and_then(|l| grads.get(&l).cloned());
        Ok([grad_of(a), grad_of(b), grad_of(c)])
    };
    attach3(name, inputs, value, Box::new(backward))
}
