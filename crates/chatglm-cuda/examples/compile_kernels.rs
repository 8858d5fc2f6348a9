//! Compiles every kernel file with NVRTC (no GPU needed) and writes the PTX
//! to a folder, e.g. for `ptxas -arch=sm_90 -v` resource reports:
//! `cargo run -p chatglm-cuda --example compile_kernels -- 90 /tmp/ptx`.

fn main() {
    let mut args = std::env::args().skip(1);
    let arch: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(90);
    let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| "kernels-ptx".into()));
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
