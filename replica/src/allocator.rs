//! Keep freed tensor memory in the process. glibc serves every allocation above its mmap
//! threshold (32 MiB at most) with a fresh `mmap` and gives it back with `munmap` on free, so
//! each large activation of every UNet and VAE layer is faulted in page by page, zeroed by the
//! kernel and unmapped again: page faults were the largest CPU cost of a generation after the
//! matrix products (BENCHMARKS.md). With one arena, mmap off for `malloc` and heap trimming
//! only past 2 GiB, a freed tensor's pages are reused by the next one. The replica's resident
//! size then stays near its peak between requests, which the per-request budget already counts.

/// Tune the C allocator for a tensor workload. Call first thing in `main`, before any thread
/// starts: a thread that has already allocated keeps its own arena, and glibc still maps large
/// blocks of such arenas one by one. A no-op where the allocator is not glibc's.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // One arena: the sampling thread's tensors then come from the main heap, the only one
        // glibc grows instead of mapping large blocks separately.
        // SAFETY: `mallopt` only changes glibc malloc parameters; it is safe to call at any
        // time and returns 0 when a value is refused (the default then stays).
        #[allow(unsafe_code)]
        let accepted = unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1) == 1
                && libc::mallopt(libc::M_MMAP_MAX, 0) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1
        };
        if !accepted {
            tracing::debug!("glibc refused the malloc tuning; large tensors keep their own mappings");
        }
    }
}
