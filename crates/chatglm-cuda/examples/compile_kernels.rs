//! Compiles every kernel file with NVRTC (no GPU needed) and writes the PTX
//! to a folder, e.g. for `ptxas -arch=sm_90 -v` resource reports:
//! `cargo run -p chatglm-cuda --example compile_kernels -- 90 /tmp/ptx`.
//! With a third argument, the versions a GPU machine's driver and NVRTC give
//! (`"driver 13000 nvrtc 13.0"`; its log prints them as "kernel cache key"),
//! the folder becomes a kernel cache for that machine (`CHATGLM_KERNEL_CACHE`),
//! in the forms a fourth argument names: `cubin`, `ptx` or `cubin,ptx` (the
//! default).

fn main() {
    let mut args = std::env::args().skip(1);
    let arch: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(90);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "kernels-ptx".into()));
    if let Some(versions) = args.next() {
        let formats = args.next().unwrap_or_else(|| "cubin,ptx".into());
        match chatglm_cuda::write_kernel_cache(&dir, arch, &versions, &formats) {
            Ok(files) => files.iter().for_each(|f| println!("{}", f.display())),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    match chatglm_cuda::compile_all(arch) {
        Ok(files) => {
            if let Err(e) = std::fs::create_dir_all(&dir) {
                eprintln!("error: cannot create {}: {e}", dir.display());
                std::process::exit(1);
            }
            for (name, ptx) in files {
                let path = dir.join(format!("{name}.ptx"));
                if let Err(e) = std::fs::write(&path, ptx) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    std::process::exit(1);
                }
                println!("{}", path.display());
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
