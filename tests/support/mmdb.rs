//! MaxMind DB fixtures written by the tests.

use super::*;

pub fn mmdb_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("georouter-geo-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes an IPv4 MaxMind DB in the temp dir: each CIDR maps to its record.
pub fn write_mmdb(name: &str, kind: &str, entries: &[(&str, serde_json::Value)]) -> PathBuf {
    use maxminddb_writer::paths::IpAddrWithMask;
    let mut db = maxminddb_writer::Database::default();
    db.metadata.database_type = kind.to_owned();
    db.metadata.binary_format_major_version = 2;
    db.metadata.build_epoch = 1_763_769_600; // 2025-11-22
    for (cidr, record) in entries {
        let data = db.insert_value(record).unwrap();
        db.insert_node(cidr.parse::<IpAddrWithMask>().unwrap(), data);
    }
    // Written aside and renamed into place: tests running in parallel may
    // write the same fixture, and a reader must never see half a file.
    static WRITES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = mmdb_dir().join(name);
    let tmp = mmdb_dir().join(format!(".{name}.{n}.tmp"));
    let file = std::fs::File::create(&tmp).unwrap();
    db.write_to(std::io::BufWriter::new(file)).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// A country database: 80.128.0.0/16 is Germany, 3.0.0.0/8 the United States,
/// 1.0.16.0/20 Japan.
pub fn country_mmdb() -> PathBuf {
    write_mmdb(
        "countries.mmdb",
        "test country",
        &[
            ("80.128.0.0/16", serde_json::json!({ "country_code": "DE" })),
            ("3.0.0.0/8", serde_json::json!({ "country_code": "US" })),
            ("1.0.16.0/20", serde_json::json!({ "country_code": "JP" })),
        ],
    )
}
