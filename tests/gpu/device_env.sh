# Sourced by the device-call scripts (from the repository root, BIN set): unpacks what `tests/gpu/pack.sh`
# packed and the shipped kernel cache, and points the binaries at the CUDA libraries and that cache.
for f in "$BIN"/pack.txz; do [ -f "$f" ] && tar xf "$f" -C "$BIN"; done
for f in "$BIN"/kcache.tgz; do [ -f "$f" ] && tar xf "$f" -C /; done  # gzip or xz: tar tells
export LD_LIBRARY_PATH=/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export CHATGLM_KERNEL_CACHE=${CHATGLM_KERNEL_CACHE:-/tmp/chatglm-kernels}
# The shipped cache holds SASS (cubins): a fresh machine skips the driver's ~110 s PTX compile.
export CHATGLM_KERNEL_FORMAT=${CHATGLM_KERNEL_FORMAT:-cubin}
