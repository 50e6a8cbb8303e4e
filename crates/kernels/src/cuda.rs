//! Launching our kernels on candle's CUDA stream: shapes, checks and device addresses.

use crate::ffi;
use candle_core::cuda_backend::cudarc::driver::{CudaStream, DevicePtr};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{bail, CudaDevice, DType, Device, Layout, Result, Storage, Tensor};
use std::ffi::c_void;

/// What the log and the memory plan need to know about a GPU.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub name: String,
    pub compute_capability: (u32, u32),
    pub total_memory: usize,
    pub free_memory: usize,
}

pub fn gpu_info(device: &CudaDevice) -> Result<GpuInfo> {
    let stream = device.cuda_stream();
    let context = stream.context();
    let (major, minor) = context.compute_capability().map_err(cuda_error)?;
    let (free_memory, total_memory) = context.mem_get_info().map_err(cuda_error)?;
    Ok(GpuInfo {
        name: context.name().map_err(cuda_error)?,
        compute_capability: (major as u32, minor as u32),
        total_memory,
        free_memory,
    })
}

/// For GPU tests: CUDA device 0, or `None` after printing `SKIPPED <test>` when there is none.
/// With FERROLLAMA_REQUIRE_GPU set (benches/gpu/check.sh sets it) a missing GPU panics instead.
pub fn gpu_or_skip(test: &str) -> Option<Device> {
    match Device::new_cuda(0) {
        Ok(device) => Some(device),
        Err(e) if std::env::var_os("FERROLLAMA_REQUIRE_GPU").is_some() => {
            panic!("{test}: FERROLLAMA_REQUIRE_GPU is set but there is no GPU: {e}")
        }
        Err(e) => {
            // The first line: candle appends a backtrace where RUST_BACKTRACE is set.
            let reason = e.to_string();
            let reason = reason.lines().next().unwrap_or_default();
            eprintln!("SKIPPED {test}: no CUDA device ({reason})");
            None
        }
    }
}

fn cuda_error(e: impl std::error::Error + Send + Sync + 'static) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}

/// Elements per 16 bytes: the innermost extent of the key layout.
fn pack(dtype: DType) -> usize {
    16 / dtype.size_in_bytes()
}

/// `[blocks, kv_heads, head_dim / x, block_size, x]` with `x = 16 / element size`: one key's
/// dimensions in 16-byte chunks, the chunks of a block's keys side by side.
pub fn key_cache_shape(
    num_blocks: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
    dtype: DType,
) -> (usize, usize, usize, usize, usize) {
    let x = pack(dtype);
    (num_blocks, kv_heads, head_dim / x, block_size, x)
}

/// `[blocks, kv_heads, head_dim, block_size]`.
pub fn value_cache_shape(
    num_blocks: usize,
    kv_heads: usize,
    head_dim: usize,
    block_size: usize,
) -> (usize, usize, usize, usize) {
    (num_blocks, kv_heads, head_dim, block_size)
}

/// Writes each token's keys and values (`[tokens, kv_heads, head_dim]`) to its cache slot
/// (`slots`: u32 `[tokens]`, `block * block_size + offset`).
pub fn reshape_and_cache(
    key: &Tensor,
    value: &Tensor,
    key_cache: &Tensor,
    value_cache: &Tensor,
    slots: &Tensor,
) -> Result<()> {
    let (tokens, kv_heads, head_dim) = key.dims3()?;
    let dtype = key.dtype();
    if value.dims() != key.dims() || slots.dims() != [tokens] || slots.dtype() != DType::U32 {
        bail!(
            "reshape_and_cache: keys {:?}, values {:?}, slots {:?} {:?}",
            key.shape(),
            value.shape(),
            slots.shape(),
            slots.dtype()
        )
    }
    let (cache_kv_heads, block_size) = check_caches(key_cache, value_cache, head_dim, dtype)?;
    if cache_kv_heads != kv_heads {
        bail!("reshape_and_cache: {kv_heads} KV heads into a cache of {cache_kv_heads}")
    }
    for t in [value, key_cache, value_cache] {
        if t.dtype() != dtype {
            bail!(
                "reshape_and_cache: mixed dtypes {dtype:?} and {:?}",
                t.dtype()
            )
        }
    }
    let launch: ffi::CacheFn = match dtype {
        DType::F32 => ffi::ferro_reshape_and_cache_f32,
        DType::F16 => ffi::ferro_reshape_and_cache_f16,
        #[cfg(ferrollama_bf16)]
        DType::BF16 => ffi::ferro_reshape_and_cache_bf16,
        other => bail!("reshape_and_cache: no kernel for {other:?} in this build"),
    };
    let stream = stream_of(key)?;
    let (key, value) = (key.contiguous()?, value.contiguous()?);
    let (k, kl) = key.storage_and_layout();
    let (v, vl) = value.storage_and_layout();
    let (kc, kcl) = key_cache.storage_and_layout();
    let (vc, vcl) = value_cache.storage_and_layout();
    let (s, sl) = slots.storage_and_layout();
    // The caches are written through their addresses, as a kernel writes any buffer: the
    // model that owns them runs one step at a time on one stream.
    let status = unsafe {
        launch(
            address(&k, kl, &stream)? as *const c_void,
            address(&v, vl, &stream)? as *const c_void,
            address(&kc, kcl, &stream)? as *mut c_void,
            address(&vc, vcl, &stream)? as *mut c_void,
            address(&s, sl, &stream)? as *const u32,
            tokens as i32,
            kv_heads as i32,
            head_dim as i32,
            block_size as i32,
            stream.cu_stream() as ffi::Stream,
        )
    };
    launched(status, "reshape_and_cache")
}

/// Attention of query rows over the paged cache. Row `r` belongs to sequence `row_seq[r]`
/// (a row of `block_tables`) and sees its keys up to position `context_lens[r] - 1`, the
/// last `window` of them when `window > 0`.
pub struct PagedAttention {
    /// u32 `[sequences, max_blocks]`.
    pub block_tables: Tensor,
    /// u32 `[rows]`.
    pub row_seq: Tensor,
    /// u32 `[rows]`.
    pub context_lens: Tensor,
    /// The most keys any row sees: sizes the partitions.
    pub max_keys: usize,
    pub scale: f32,
    /// Sliding window (0: none).
    pub window: usize,
}

impl PagedAttention {
    /// `q` is `[rows, heads, head_dim]`; returns the same shape.
    pub fn forward(&self, q: &Tensor, key_cache: &Tensor, value_cache: &Tensor) -> Result<Tensor> {
        let (rows, heads, head_dim) = q.dims3()?;
        let dtype = q.dtype();
        let (kv_heads, block_size) = check_caches(key_cache, value_cache, head_dim, dtype)?;
        if heads % kv_heads != 0 || key_cache.dtype() != dtype || value_cache.dtype() != dtype {
            bail!(
                "paged_attention: {heads} heads over {kv_heads} KV heads, {dtype:?} queries over a {:?} cache",
                key_cache.dtype()
            )
        }
        let (seqs, max_blocks) = self.block_tables.dims2()?;
        for (name, t) in [
            ("row_seq", &self.row_seq),
            ("context_lens", &self.context_lens),
        ] {
            if t.dims() != [rows] || t.dtype() != DType::U32 {
                bail!(
                    "paged_attention: {name} {:?} {:?} for {rows} rows",
                    t.shape(),
                    t.dtype()
                )
            }
        }
        if seqs == 0 || self.block_tables.dtype() != DType::U32 {
            bail!(
                "paged_attention: block tables {:?}",
                self.block_tables.shape()
            )
        }
        let launch: ffi::AttentionFn = match dtype {
            DType::F32 => ffi::ferro_paged_attention_f32,
            DType::F16 => ffi::ferro_paged_attention_f16,
            #[cfg(ferrollama_bf16)]
            DType::BF16 => ffi::ferro_paged_attention_bf16,
            other => bail!("paged_attention: no kernel for {other:?} in this build"),
        };
        let partition = unsafe { ffi::ferro_attention_partition_size() } as usize;
        let partitions = self.max_keys.div_ceil(partition).max(1);
        let device = q.device();
        // NaN first: an element the kernel failed to write shows, never a stale zero.
        let out = Tensor::full(f32::NAN, (rows, heads, head_dim), device)?.to_dtype(dtype)?;
        let part_out = Tensor::zeros((rows, heads, partitions, head_dim), DType::F32, device)?;
        let part_max = Tensor::zeros((rows, heads, partitions), DType::F32, device)?;
        let part_sum = Tensor::zeros((rows, heads, partitions), DType::F32, device)?;
        let stream = stream_of(q)?;
        let q = q.contiguous()?;
        {
            let guards = [
                &out,
                &part_out,
                &part_max,
                &part_sum,
                &q,
                key_cache,
                value_cache,
                &self.block_tables,
                &self.row_seq,
                &self.context_lens,
            ]
            .map(|t| t.storage_and_layout());
            let mut addresses = [0u64; 10];
            for (a, (storage, layout)) in addresses.iter_mut().zip(&guards) {
                *a = address(storage, layout, &stream)?;
            }
            let [o, po, pm, ps, q, kc, vc, bt, rs, cl] = addresses;
            let status = unsafe {
                launch(
                    o as *mut c_void,
                    po as *mut f32,
                    pm as *mut f32,
                    ps as *mut f32,
                    q as *const c_void,
                    kc as *const c_void,
                    vc as *const c_void,
                    bt as *const u32,
                    rs as *const u32,
                    cl as *const u32,
                    rows as i32,
                    heads as i32,
                    kv_heads as i32,
                    head_dim as i32,
                    block_size as i32,
                    max_blocks as i32,
                    partitions as i32,
                    self.scale,
                    self.window as i32,
                    stream.cu_stream() as ffi::Stream,
                )
            };
            launched(status, "paged_attention")?;
        }
        Ok(out)
    }
}

/// Checks that the caches have the layout of `head_dim`-wide heads in `dtype`; returns their
/// KV heads and block size.
fn check_caches(
    key_cache: &Tensor,
    value_cache: &Tensor,
    head_dim: usize,
    dtype: DType,
) -> Result<(usize, usize)> {
    let (num_blocks, kv_heads, _, block_size) = value_cache.dims4()?;
    let x = pack(dtype);
    let key_shape = key_cache_shape(num_blocks, kv_heads, head_dim, block_size, dtype);
    let value_shape = value_cache_shape(num_blocks, kv_heads, head_dim, block_size);
    if head_dim % x != 0 || key_cache.dims5()? != key_shape || value_cache.dims4()? != value_shape {
        bail!(
            "KV cache shapes {:?} and {:?} do not fit heads of {head_dim} ({dtype:?})",
            key_cache.shape(),
            value_cache.shape()
        )
    }
    Ok((kv_heads, block_size))
}

fn stream_of(t: &Tensor) -> Result<std::sync::Arc<CudaStream>> {
    match t.device() {
        Device::Cuda(device) => Ok(device.cuda_stream()),
        other => bail!("expected a CUDA tensor, found one on {other:?}"),
    }
}

/// The device address of a contiguous CUDA tensor's first element.
fn address(storage: &Storage, layout: &Layout, stream: &CudaStream) -> Result<u64> {
    let Storage::Cuda(cuda) = storage else {
        bail!("expected a tensor on a CUDA device")
    };
    let Some((start, _)) = layout.contiguous_offsets() else {
        bail!("expected a contiguous tensor")
    };
    macro_rules! at {
        ($slice:expr, $t:ty) => {
            $slice.device_ptr(stream).0 + (start * std::mem::size_of::<$t>()) as u64
        };
    }
    Ok(match &cuda.slice {
        CudaStorageSlice::F32(s) => at!(s, f32),
        CudaStorageSlice::F16(s) => at!(s, half::f16),
        CudaStorageSlice::BF16(s) => at!(s, half::bf16),
        CudaStorageSlice::U32(s) => at!(s, u32),
        _ => bail!("a kernel argument of an unsupported dtype"),
    })
}

fn launched(status: i32, kernel: &str) -> Result<()> {
    if status != 0 {
        bail!("{kernel}: CUDA launch failed with cudaError_t {status}")
    }
    Ok(())
}
