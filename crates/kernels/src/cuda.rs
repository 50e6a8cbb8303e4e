//! Our kernels on candle's CUDA tensors and stream: one step's attention inputs uploaded once
//! ([`AttentionStep`]), the launches of `launch.rs` with the tensors' device addresses, and the
//! device set-up (memory pool, event tracking) that the model's step relies on.

use crate::ffi::{Element, Stream};
use crate::launch::{self, AttentionAddresses};
use crate::plan::{AttentionPlan, MAX_GROUP};
use candle_core::cuda_backend::cudarc::driver::{sys, CudaStream, DevicePtr};
use candle_core::cuda_backend::CudaStorageSlice;
use candle_core::{bail, CudaDevice, DType, Device, Layout, Result, Storage, Tensor};
use std::ffi::c_void;

/// What the log, the memory plan and the step planner need to know about a GPU.
#[derive(Debug, Clone)]
pub struct GpuInfo {
    pub name: String,
    pub compute_capability: (u32, u32),
    pub total_memory: usize,
    pub free_memory: usize,
    pub multiprocessors: usize,
}

pub fn gpu_info(device: &CudaDevice) -> Result<GpuInfo> {
    let stream = device.cuda_stream();
    let context = stream.context();
    let (major, minor) = context.compute_capability().map_err(cuda_error)?;
    let (free_memory, total_memory) = context.mem_get_info().map_err(cuda_error)?;
    let multiprocessors = context
        .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
        .map_err(cuda_error)?;
    Ok(GpuInfo {
        name: context.name().map_err(cuda_error)?,
        compute_capability: (major as u32, minor as u32),
        total_memory,
        free_memory,
        multiprocessors: multiprocessors.max(1) as usize,
    })
}

/// Once per device, before the model allocates: the model uses candle's one stream, so
/// cudarc's per-allocation events (for synchronising several streams) are pure cost; and the
/// default memory pool keeps what it has (release threshold: all), so a step's activations are
/// reused from the pool instead of going back to the driver at every synchronisation.
pub fn prepare_device(device: &CudaDevice) -> Result<()> {
    unsafe { device.disable_event_tracking() };
    let stream = device.cuda_stream();
    let ordinal = stream.context().ordinal() as i32;
    unsafe {
        let mut pool = std::ptr::null_mut();
        let status = sys::cuDeviceGetDefaultMemPool(&mut pool, ordinal);
        if status != sys::CUresult::CUDA_SUCCESS {
            bail!("cuDeviceGetDefaultMemPool: {status:?}")
        }
        let mut threshold = u64::MAX;
        let status = sys::cuMemPoolSetAttribute(
            pool,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            &mut threshold as *mut u64 as *mut c_void,
        );
        if status != sys::CUresult::CUDA_SUCCESS {
            bail!("cuMemPoolSetAttribute: {status:?}")
        }
    }
    Ok(())
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

pub fn element(dtype: DType) -> Result<Element> {
    Ok(match dtype {
        DType::F32 => Element::F32,
        DType::F16 => Element::F16,
        DType::BF16 => Element::Bf16,
        other => bail!("no kernels for {other:?}"),
    })
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

/// A tensor of uninitialised device memory: for outputs a kernel writes in full.
pub fn uninit(
    shape: impl Into<candle_core::Shape>,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    unsafe { Tensor::empty(shape, dtype, device) }
}

/// One step's attention on the GPU: its plan and the plan's index arrays, uploaded once and
/// read by every layer's launches.
pub struct AttentionStep {
    plan: AttentionPlan,
    indices: Tensor,
    scratch: Option<Tensor>,
}

impl AttentionStep {
    pub fn new(plan: AttentionPlan, device: &Device) -> Result<Self> {
        let indices = Tensor::new(plan.indices.as_slice(), device)?;
        let scratch = match plan.scratch_len() {
            0 => None,
            n => Some(uninit(n, DType::F32, device)?),
        };
        Ok(Self {
            plan,
            indices,
            scratch,
        })
    }

    pub fn plan(&self) -> &AttentionPlan {
        &self.plan
    }

    /// How many thread blocks keep `info`'s GPU busy: the planner's `thread_blocks`.
    pub fn thread_blocks(info: &GpuInfo) -> usize {
        2 * info.multiprocessors
    }

    /// Writes the step's new keys and values (`[rows, kv_heads, head_dim]`) to their slots.
    pub fn write_cache(
        &self,
        key: &Tensor,
        value: &Tensor,
        key_cache: &Tensor,
        value_cache: &Tensor,
    ) -> Result<()> {
        let s = &self.plan.shape;
        let shape = [self.plan.rows, s.kv_heads, s.head_dim];
        self.check_caches(key_cache, value_cache, key.dtype())?;
        let (key, value) = (key.contiguous()?, value.contiguous()?);
        for (name, t) in [("keys", &key), ("values", &value)] {
            if t.dims() != shape || t.dtype() != key_cache.dtype() {
                bail!("write_cache: {name} {:?} {:?}", t.shape(), t.dtype())
            }
        }
        let stream = stream_of(&key)?;
        let a = Addresses::of(
            &[&key, &value, key_cache, value_cache, &self.indices],
            &stream,
        )?;
        // The caches are written through their addresses, as a kernel writes any buffer: the
        // model that owns them runs one step at a time on one stream.
        to_candle(unsafe {
            launch::reshape_and_cache(
                element(key.dtype())?,
                &self.plan,
                a.get(0),
                a.get(1),
                a.get_mut(2),
                a.get_mut(3),
                a.get(4) as *const u32,
                cu(&stream),
            )
        })
    }

    /// The fused projection's rows `[rows, (heads + 2 kv_heads) head_dim]` with rotary
    /// embedding (`cos`, `sin`: f32 `[rows, head_dim / 2]`): returns q `[rows, heads, head_dim]`,
    /// and writes k and v to their cache slots.
    pub fn qkv_rope_cache(
        &self,
        qkv: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        key_cache: &Tensor,
        value_cache: &Tensor,
    ) -> Result<Tensor> {
        let s = &self.plan.shape;
        let rows = self.plan.rows;
        let dtype = qkv.dtype();
        self.check_caches(key_cache, value_cache, dtype)?;
        if qkv.dims() != [rows, (s.heads + 2 * s.kv_heads) * s.head_dim] {
            bail!("qkv_rope_cache: projections {:?}", qkv.shape())
        }
        for t in [cos, sin] {
            if t.dims() != [rows, s.head_dim / 2] || t.dtype() != DType::F32 {
                bail!("qkv_rope_cache: cos/sin {:?} {:?}", t.shape(), t.dtype())
            }
        }
        let qkv = qkv.contiguous()?;
        let q = uninit((rows, s.heads, s.head_dim), dtype, qkv.device())?;
        let stream = stream_of(&qkv)?;
        let a = Addresses::of(
            &[&q, key_cache, value_cache, &qkv, cos, sin, &self.indices],
            &stream,
        )?;
        to_candle(unsafe {
            launch::qkv_rope_cache(
                element(dtype)?,
                &self.plan,
                a.get_mut(0),
                a.get_mut(1),
                a.get_mut(2),
                a.get(3),
                a.get(4) as *const f32,
                a.get(5) as *const f32,
                a.get(6) as *const u32,
                cu(&stream),
            )
        })?;
        Ok(q)
    }

    /// Attention of the step's rows, `q` `[rows, heads, head_dim]`, over the caches (which
    /// already hold this step's keys and values). Returns the same shape.
    pub fn attention(
        &self,
        q: &Tensor,
        key_cache: &Tensor,
        value_cache: &Tensor,
    ) -> Result<Tensor> {
        let s = &self.plan.shape;
        let dtype = q.dtype();
        self.check_caches(key_cache, value_cache, dtype)?;
        if q.dims() != [self.plan.rows, s.heads, s.head_dim] {
            bail!("paged_attention: queries {:?}", q.shape())
        }
        let q = q.contiguous()?;
        let out = uninit(q.shape(), dtype, q.device())?;
        let stream = stream_of(&q)?;
        let mut tensors = vec![&out, &q, key_cache, value_cache, &self.indices];
        if let Some(scratch) = &self.scratch {
            tensors.push(scratch);
        }
        let a = Addresses::of(&tensors, &stream)?;
        let addresses = AttentionAddresses {
            out: a.get_mut(0),
            q: a.get(1),
            key_cache: a.get(2),
            value_cache: a.get(3),
            indices: a.get(4) as *const u32,
            scratch: if self.scratch.is_some() {
                a.get_mut(5) as *mut f32
            } else {
                std::ptr::null_mut()
            },
        };
        to_candle(unsafe {
            launch::attention(element(dtype)?, &self.plan, &addresses, cu(&stream))
        })?;
        Ok(out)
    }

    fn check_caches(&self, key_cache: &Tensor, value_cache: &Tensor, dtype: DType) -> Result<()> {
        let s = &self.plan.shape;
        let num_blocks = value_cache.dim(0)?;
        let keys = key_cache_shape(num_blocks, s.kv_heads, s.head_dim, s.block_size, dtype);
        let values = value_cache_shape(num_blocks, s.kv_heads, s.head_dim, s.block_size);
        if key_cache.dims5()? != keys
            || value_cache.dims4()? != values
            || key_cache.dtype() != dtype
            || value_cache.dtype() != dtype
            || s.head_dim % pack(dtype) != 0
            || s.heads % s.kv_heads != 0
            || s.heads / s.kv_heads > MAX_GROUP * 64
        {
            bail!(
                "KV cache {:?} {:?} and {:?} do not fit {dtype:?} heads {s:?}",
                key_cache.shape(),
                key_cache.dtype(),
                value_cache.shape()
            )
        }
        Ok(())
    }
}

/// `x + delta` and `rmsnorm(x + delta) * weight`, rows of `weight.len()`, in one kernel.
pub fn add_rms_norm(
    x: &Tensor,
    delta: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    let (rows, width) = x.dims2()?;
    let dtype = x.dtype();
    if delta.dims() != x.dims() || weight.dims() != [width] {
        bail!(
            "add_rms_norm: {:?} + {:?}, weight {:?}",
            x.shape(),
            delta.shape(),
            weight.shape()
        )
    }
    if delta.dtype() != dtype || weight.dtype() != dtype {
        bail!("add_rms_norm: mixed dtypes")
    }
    let (x, delta) = (x.contiguous()?, delta.contiguous()?);
    let sum = uninit((rows, width), dtype, x.device())?;
    let h = uninit((rows, width), dtype, x.device())?;
    let stream = stream_of(&x)?;
    let a = Addresses::of(&[&sum, &x, &delta, weight, &h], &stream)?;
    to_candle(unsafe {
        launch::add_rms_norm(
            element(dtype)?,
            a.get_mut(0),
            a.get(1),
            a.get(2),
            a.get(3),
            a.get_mut(4),
            rows,
            width,
            eps,
            cu(&stream),
        )
    })?;
    Ok((sum, h))
}

/// `silu(gate) * up` of rows `[gate | up]`: `[rows, 2 width]` → `[rows, width]`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    let (rows, both) = gate_up.dims2()?;
    if both % 2 != 0 {
        bail!("silu_mul: an odd width {both}")
    }
    let gate_up = gate_up.contiguous()?;
    let out = uninit((rows, both / 2), gate_up.dtype(), gate_up.device())?;
    let stream = stream_of(&gate_up)?;
    let a = Addresses::of(&[&out, &gate_up], &stream)?;
    to_candle(unsafe {
        launch::silu_mul(
            element(gate_up.dtype())?,
            a.get_mut(0),
            a.get(1),
            rows,
            both / 2,
            cu(&stream),
        )
    })?;
    Ok(out)
}

/// The `k` highest logits of each row of `[rows, vocab]` f32 logits, ranked (the higher
/// first, the lower id among equals): values `[rows, k]` f32 and ids `[rows, k]` u32.
pub fn top_k(logits: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    let (rows, vocab) = logits.dims2()?;
    if logits.dtype() != DType::F32 {
        bail!("top_k: f32 logits, not {:?}", logits.dtype())
    }
    let logits = logits.contiguous()?;
    let values = uninit((rows, k), DType::F32, logits.device())?;
    let ids = uninit((rows, k), DType::U32, logits.device())?;
    let stream = stream_of(&logits)?;
    let a = Addresses::of(&[&values, &ids, &logits], &stream)?;
    to_candle(unsafe {
        launch::top_k(
            a.get_mut(0) as *mut f32,
            a.get_mut(1) as *mut u32,
            a.get(2) as *const f32,
            rows,
            vocab,
            k,
            cu(&stream),
        )
    })?;
    Ok((values, ids))
}

/// `a` (16 x 16) times `b` (16 x 8), both row-major f16 or bf16, through the kernels' mma
/// fragment layouts: the hardware's check of them.
pub fn mma_check(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = Tensor::zeros((16, 8), DType::F32, a.device())?;
    let stream = stream_of(a)?;
    let addresses = Addresses::of(&[&c, a, b], &stream)?;
    extern "C" {
        fn ferro_mma_check_f16(c: *mut f32, a: *const c_void, b: *const c_void, s: Stream) -> i32;
        #[cfg(ferrollama_bf16)]
        fn ferro_mma_check_bf16(c: *mut f32, a: *const c_void, b: *const c_void, s: Stream) -> i32;
    }
    let (cp, ap, bp) = (
        addresses.get_mut(0) as *mut f32,
        addresses.get(1),
        addresses.get(2),
    );
    let status = unsafe {
        match a.dtype() {
            DType::F16 => ferro_mma_check_f16(cp, ap, bp, cu(&stream)),
            #[cfg(ferrollama_bf16)]
            DType::BF16 => ferro_mma_check_bf16(cp, ap, bp, cu(&stream)),
            other => bail!("mma_check: {other:?}"),
        }
    };
    to_candle(crate::ffi::launched(status, "mma_check"))?;
    Ok(c)
}

/// The device addresses of contiguous tensors, taken while their storage is borrowed.
struct Addresses(Vec<u64>);

impl Addresses {
    fn of(tensors: &[&Tensor], stream: &CudaStream) -> Result<Self> {
        let mut addresses = Vec::with_capacity(tensors.len());
        for t in tensors {
            let (storage, layout) = t.storage_and_layout();
            addresses.push(address(&storage, layout, stream)?);
        }
        Ok(Self(addresses))
    }
    fn get(&self, i: usize) -> *const c_void {
        self.0[i] as *const c_void
    }
    fn get_mut(&self, i: usize) -> *mut c_void {
        self.0[i] as *mut c_void
    }
}

fn stream_of(t: &Tensor) -> Result<std::sync::Arc<CudaStream>> {
    match t.device() {
        Device::Cuda(device) => Ok(device.cuda_stream()),
        other => bail!("expected a CUDA tensor, found one on {other:?}"),
    }
}

fn cu(stream: &CudaStream) -> Stream {
    stream.cu_stream() as Stream
}

fn to_candle(r: std::result::Result<(), String>) -> Result<()> {
    r.map_err(candle_core::Error::Msg)
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
