//! `allocator::keep_freed_memory` as the binary uses it: called first in `main`, then a large
//! tensor-sized buffer allocated on another thread (like the replica's sampling thread) must
//! come from the heap, not from a mapping of its own that is unmapped again on free. Runs
//! without the test harness so that no other thread exists when the tuning is applied.

fn main() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        sdplane_replica::allocator::keep_freed_memory();
        let worker = std::thread::spawn(|| {
            // SAFETY: `mallinfo2` only reads allocator statistics.
            #[allow(unsafe_code)]
            let before = unsafe { libc::mallinfo2() }.hblkhd;
            let big = vec![1u8; 64 << 20];
            #[allow(unsafe_code)]
            let during = unsafe { libc::mallinfo2() }.hblkhd;
            assert_eq!(big.iter().map(|&b| usize::from(b)).sum::<usize>(), 64 << 20);
            (before, during)
        });
        let (before, during) = worker.join().expect("worker thread");
        assert!(
            during < before + (64 << 20),
            "a 64 MiB buffer on a worker thread got its own mmap ({before} → {during} mapped bytes)"
        );
        println!(
            "test a_large_buffer_on_a_worker_thread_comes_from_the_heap ... ok ({before} → {during} mapped bytes)"
        );
    }
}
