//! CPU kernels for what candle does slowly.

pub mod q4_1;
