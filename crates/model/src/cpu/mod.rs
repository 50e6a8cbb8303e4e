//! CPU kernels for what candle's CPU backend does slowly.

pub mod elementwise;
pub mod quant;
pub mod team;
