//! CPU kernels for what candle's CPU backend does slowly.

pub mod elementwise;
mod huge_pages;
pub mod quant;
pub mod team;
