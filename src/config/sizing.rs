//! The memory formula (README, "Sizing memory"): the RSS a pod's memory limit must allow for
//! given `--cache-mem`, `--cache-size` and `--max-connections`. The constants are measured
//! with `bench/soak.sh measure` and the soak (`bench/soak.sh`), which checks RSS against this
//! formula at every sample; the Helm chart and the kustomize base compute the same sum.

/// Runtime, worker threads, TLS roots, metrics and allocator arenas: 15 MiB at rest
/// (`bench/soak.sh measure`, release build), and blocking threads for disk I/O under load.
pub const FIXED: u64 = 48 << 20;
/// The memory tier's bytes cost this much more in RSS (per-entry metadata, the cache's own
/// structures, allocator slack), in percent of `--cache-mem`.
pub const MEM_TIER_PERCENT: u64 = 150;
/// Disk index, per entry (211 bytes measured by `cache::disk`'s `index_memory_per_entry`);
/// the disk tier holds at most one entry per [`crate::cache::disk::BYTES_PER_ENTRY`] of
/// `--cache-size`, so this is 8 MiB per GiB of it.
pub const INDEX_PER_ENTRY: u64 = 256;
/// One client connection or tunnel with its buffers on both sides. `bench/soak.sh measure`
/// gave 19 KiB for an idle keep-alive connection and 68 KiB for a tunnel that has carried
/// data (its two 64 KiB bridge buffers), with the release build; this allows for the
/// buffers of a connection that is streaming.
pub const PER_CONNECTION: u64 = 128 << 10;
/// Bodies in flight between upstream, the disk writer and clients, for all fills together
/// (the budget `cache::fill` enforces).
pub const FILLS: u64 = crate::cache::fill::FILLS_BUDGET;

/// A fill that goes on after its clients left (to store the object) holds an upstream
/// connection without a client connection counted in [`PER_CONNECTION`]: that
/// connection's buffers (its read buffer is capped at 64 KiB,
/// `upstream::settings::READ_BUF_MAX`), and the disk-writer thread's stack pages. Its
/// window is in [`FILLS`].
pub const PER_ORPHAN_FILL: u64 = 512 << 10;
/// All fills without a client: at most [`crate::cache::fill::MAX_ORPHAN_FILLS`] go on at
/// once (16 MiB).
pub const ORPHAN_FILLS: u64 = crate::cache::fill::MAX_ORPHAN_FILLS as u64 * PER_ORPHAN_FILL;

/// The memory bound in bytes.
pub fn memory_bound(cache_mem: u64, cache_size: u64, max_connections: u64) -> u64 {
    let entries = cache_size / crate::cache::disk::BYTES_PER_ENTRY;
    FIXED
        .saturating_add(cache_mem.saturating_mul(MEM_TIER_PERCENT) / 100)
        .saturating_add(entries.saturating_mul(INDEX_PER_ENTRY))
        .saturating_add(max_connections.saturating_mul(PER_CONNECTION))
        .saturating_add(FILLS)
        .saturating_add(ORPHAN_FILLS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_adds_its_terms() {
        let m = memory_bound(32 << 20, 256 << 20, 256);
        assert_eq!(
            m,
            FIXED
                + (48 << 20)
                + 8192 * INDEX_PER_ENTRY
                + 256 * PER_CONNECTION
                + FILLS
                + ORPHAN_FILLS
        );
        assert!(memory_bound(u64::MAX, u64::MAX, u64::MAX) > 0);
    }
}
