//! Databases of older layouts, converted at open: `leases` keyed by address with the
//! `changes` log (the first version), and `lease_log`, one entry per record; and the on-disk
//! client indexes of older versions, dropped (they live only in memory now). Every sequence
//! number is kept, so a peer's watermark stays valid across the upgrade.

use std::net::Ipv4Addr;
use std::path::Path;

use redb::{ReadableTable, TableDefinition};

use super::codec::{self, push_record};
use super::writer::{boxed, LOG};

/// The first log layout (one entry per record), converted into `LOG` at open.
pub(super) const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("lease_log");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The older layout, converted into `LOG` at open: address → record, and sequence → address.
pub(super) const LEGACY_LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("leases");
pub(super) const LEGACY_CHANGES: TableDefinition<u64, u32> = TableDefinition::new("changes");
/// Tables and META key of the on-disk client indexes of older versions, dropped at open.
pub(super) const LEGACY_BY_MAC: TableDefinition<&[u8], ()> = TableDefinition::new("by_mac");
pub(super) const LEGACY_BY_CLIENT_ID: TableDefinition<&[u8], ()> =
    TableDefinition::new("by_client_id");
pub(super) const LEGACY_INDEXED_SEQ: &str = "indexed_seq";

/// Records per entry when converting an older layout.
const CONVERT_BATCH: usize = 256;

/// Converts the older layouts into `LOG`, keeping each record's sequence number so a peer's
/// watermark stays valid: `leases` keyed by address plus the `changes` log (the first
/// version), and `lease_log`, one entry per record. A record whose sequence cannot be read
/// was skipped at every open before; it is dropped with a warning.
pub(super) fn migrate_legacy(
    txn: &redb::WriteTransaction,
    path: &Path,
) -> Result<(), Box<redb::Error>> {
    let names: Vec<String> = txn
        .list_tables()
        .map_err(boxed)?
        .map(|t| redb::TableHandle::name(&t).to_string())
        .collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    if !has("leases") && !has("lease_log") {
        return Ok(());
    }
    let mut old: Vec<(u64, Vec<u8>)> = Vec::new();
    if has("leases") {
        let t = txn.open_table(LEGACY_LEASES).map_err(boxed)?;
        for row in t.iter().map_err(boxed)? {
            let (k, v) = row.map_err(boxed)?;
            match codec::decode_seq(v.value()) {
                Ok(seq) => old.push((seq, v.value().to_vec())),
                Err(e) => tracing::warn!(
                    ip = %Ipv4Addr::from(k.value()),
                    "dropping unreadable lease record of {} while converting: {e}",
                    Ipv4Addr::from(k.value())
                ),
            }
        }
    }
    if has("lease_log") {
        let t = txn.open_table(LEGACY_LOG).map_err(boxed)?;
        for row in t.iter().map_err(boxed)? {
            let (k, v) = row.map_err(boxed)?;
            old.push((k.value(), v.value().to_vec()));
        }
    }
    old.sort_by_key(|(seq, _)| *seq);
    let moved = old.len();
    {
        let mut log = txn.open_table(LOG).map_err(boxed)?;
        for chunk in old.chunks(CONVERT_BATCH) {
            let mut entry = Vec::new();
            for (_, rec) in chunk {
                push_record(&mut entry, rec);
            }
            log.insert(chunk[0].0, entry.as_slice()).map_err(boxed)?;
        }
    }
    txn.delete_table(LEGACY_LEASES).map_err(boxed)?;
    txn.delete_table(LEGACY_CHANGES).map_err(boxed)?;
    txn.delete_table(LEGACY_LOG).map_err(boxed)?;
    tracing::info!(
        path = %path.display(),
        leases = moved,
        "lease database {} converted to the current append-only log ({moved} records)",
        path.display()
    );
    Ok(())
}

/// Drops the on-disk client indexes of older versions and their checkpoint mark.
pub(super) fn drop_legacy_indexes(txn: &redb::WriteTransaction) -> Result<(), Box<redb::Error>> {
    {
        let mut meta = txn.open_table(META).map_err(boxed)?;
        meta.remove(LEGACY_INDEXED_SEQ).map_err(boxed)?;
    }
    for legacy in [LEGACY_BY_MAC, LEGACY_BY_CLIENT_ID] {
        if txn.delete_table(legacy).map_err(boxed)? {
            tracing::info!("dropped the on-disk {legacy} index (kept in memory now)");
        }
    }
    Ok(())
}
