//! With the `cuda` feature: compiles `kernels/*.cu` with nvcc for the one architecture named by
//! `CUDA_COMPUTE_CAP` (as candle-kernels does) into a static library. With `emulate` (and not
//! `cuda`): compiles the same sources as host C++ against `kernels/emulator.h`, for tests
//! without a GPU. Always: records that architecture (0 without CUDA) for the dtype policy, and
//! `cfg(ferrollama_bf16)` when the build has bf16 kernels (8.0 and up, and the emulator).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ferrollama_bf16)");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo::rerun-if-env-changed=NVCC");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let cuda = env::var_os("CARGO_FEATURE_CUDA").is_some();
    let compute_cap = if cuda { compute_cap() } else { 0 };
    std::fs::write(
        out.join("build_info.rs"),
        format!("pub const BUILD_COMPUTE_CAP: u32 = {compute_cap};\n"),
    )
    .unwrap();
    if !cuda {
        if env::var_os("CARGO_FEATURE_EMULATE").is_some() {
            emulate();
        }
        return;
    }
    if compute_cap >= 80 {
        println!("cargo::rustc-cfg=ferrollama_bf16");
    }
    // Read when the script runs, not baked in when it compiles: a target dir shared by clones
    // at other paths (CI keeps one under /tmp) would otherwise point at a clone that is gone.
    let sources = sources();
    let nvcc = nvcc();
    let mut objects = Vec::new();
    for unit in units(&sources) {
        let object = out.join(unit.file_stem().unwrap()).with_extension("o");
        let mut cmd = Command::new(&nvcc);
        cmd.args(["-c", "-O3", "-std=c++17", "--expt-relaxed-constexpr"])
            .arg(format!(
                "-gencode=arch=compute_{compute_cap},code=[sm_{compute_cap},compute_{compute_cap}]"
            ))
            .args(["-Xcompiler", "-fPIC", "-I"])
            .arg(&sources)
            .arg("-o")
            .arg(&object)
            .arg(&unit);
        if compute_cap >= 80 {
            cmd.arg("-DFERRO_BF16");
        }
        run(&mut cmd);
        objects.push(object);
    }
    let lib = out.join("libferrollama_kernels.a");
    let _ = std::fs::remove_file(&lib);
    run(Command::new("ar").arg("crs").arg(&lib).args(&objects));
    println!("cargo::rustc-link-search=native={}", out.display());
    println!("cargo::rustc-link-lib=static=ferrollama_kernels");
    println!("cargo::rustc-link-lib=dylib=cudart");
}

fn sources() -> PathBuf {
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let sources = Path::new(&manifest_dir).join("../../kernels");
    println!("cargo::rerun-if-changed={}", sources.display());
    sources
}

/// The `.cu` files (headers are `.cuh` and `.h`).
fn units(sources: &Path) -> Vec<PathBuf> {
    let mut units: Vec<PathBuf> = std::fs::read_dir(sources)
        .unwrap_or_else(|e| panic!("cannot read the CUDA sources in {}: {e}", sources.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    units.sort();
    units
}

/// The kernels as host C++ under the emulator (bf16 included: the host has no arch limits).
#[cfg(feature = "emulate")]
fn emulate() {
    println!("cargo::rustc-cfg=ferrollama_bf16");
    let sources = sources();
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .define("FERRO_EMULATE", None)
        .include(&sources)
        // The .cu files are C++ to the host compiler.
        .flag("-xc++")
        .warnings(false);
    for unit in units(&sources) {
        build.file(unit);
    }
    build.compile("ferrollama_kernels_emulated");
}

#[cfg(not(feature = "emulate"))]
fn emulate() {}

/// `CUDA_COMPUTE_CAP` (75 for a T4, 90 for H100/H200), else what nvidia-smi reports.
fn compute_cap() -> u32 {
    if let Ok(cap) = env::var("CUDA_COMPUTE_CAP") {
        return cap.replace('.', "").parse().unwrap_or_else(|_| {
            panic!("CUDA_COMPUTE_CAP={cap}: expected a number such as 75 or 90")
        });
    }
    let smi = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok());
    match smi.as_deref().and_then(|s| s.lines().next()) {
        Some(cap) => cap.trim().replace('.', "").parse().unwrap(),
        None => panic!("set CUDA_COMPUTE_CAP (75 for a T4, 90 for H100/H200): no nvidia-smi here"),
    }
}

fn nvcc() -> PathBuf {
    if let Some(nvcc) = env::var_os("NVCC") {
        return nvcc.into();
    }
    match env::var_os("CUDA_HOME") {
        Some(home) => Path::new(&home).join("bin/nvcc"),
        None => "nvcc".into(),
    }
}

fn run(cmd: &mut Command) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (see kernels/cuda-toolchain.sh)"));
    assert!(status.success(), "{cmd:?} failed");
}
