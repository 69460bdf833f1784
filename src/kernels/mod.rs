//! Compute kernels glance brings itself, where tract's are slow on a CPU people use.

pub mod int8;
