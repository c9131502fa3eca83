//! The archive check's unit tests: zips and gzips written by hand, so a
//! test can make the directory declare what the data is not (as hostile
//! input does), and the fuzz seeds real tools wrote. A file of their own:
//! they outgrew the module.

use std::io::Write as _;
use std::time::Instant;

use super::bytes::printable;
use super::zip::{
    CENTRAL_SIG, END_LEN, END_SIG, FLAG_ENCRYPTED, LOCAL_SIG, METHOD_DEFLATE, METHOD_STORED,
    ZIP64_EXTRA,
};
use super::*;

fn limits() -> Limits {
    Limits {
        max_depth: 3,
        max_expanded: 100_000_000,
        max_ratio: 100,
        max_files: 1000,
        max_nested: 25_000_000,
        deadline: None,
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut encoder =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// One entry as a test writes it: what the directory declares may
/// differ from what the data is (that is what hostile input does).
#[derive(Clone)]
struct Item {
    name: String,
    method: u16,
    flags: u16,
    /// The bytes stored in the archive (compressed for deflate).
    packed: Vec<u8>,
    /// The uncompressed size the directory (and local header) declare.
    size: u64,
}

fn stored(name: &str, data: &[u8]) -> Item {
    Item {
        name: name.into(),
        method: METHOD_STORED,
        flags: 0,
        packed: data.to_vec(),
        size: data.len() as u64,
    }
}

fn deflated(name: &str, data: &[u8]) -> Item {
    Item {
        name: name.into(),
        method: METHOD_DEFLATE,
        flags: 0,
        packed: deflate(data),
        size: data.len() as u64,
    }
}

/// Sizes above 4 GiB go to a zip64 extra field (in the directory).
fn zip(items: &[Item]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut directory = Vec::new();
    for item in items {
        let offset = out.len() as u32;
        let zip64 = item.size > u64::from(u32::MAX);
        let size32 = if zip64 { u32::MAX } else { item.size as u32 };
        let local = |out: &mut Vec<u8>| {
            out.extend_from_slice(&LOCAL_SIG.to_le_bytes());
            out.extend_from_slice(&20u16.to_le_bytes());
            out.extend_from_slice(&item.flags.to_le_bytes());
            out.extend_from_slice(&item.method.to_le_bytes());
            out.extend_from_slice(&[0; 8]); // time, date, crc
            out.extend_from_slice(&(item.packed.len() as u32).to_le_bytes());
            out.extend_from_slice(&size32.to_le_bytes());
            out.extend_from_slice(&(item.name.len() as u16).to_le_bytes());
            out.extend_from_slice(&0u16.to_le_bytes());
            out.extend_from_slice(item.name.as_bytes());
        };
        local(&mut out);
        out.extend_from_slice(&item.packed);
        let extra: Vec<u8> = if zip64 {
            [
                &ZIP64_EXTRA.to_le_bytes()[..],
                &8u16.to_le_bytes(),
                &item.size.to_le_bytes(),
            ]
            .concat()
        } else {
            Vec::new()
        };
        directory.extend_from_slice(&CENTRAL_SIG.to_le_bytes());
        directory.extend_from_slice(&20u16.to_le_bytes());
        directory.extend_from_slice(&20u16.to_le_bytes());
        directory.extend_from_slice(&item.flags.to_le_bytes());
        directory.extend_from_slice(&item.method.to_le_bytes());
        directory.extend_from_slice(&[0; 8]);
        directory.extend_from_slice(&(item.packed.len() as u32).to_le_bytes());
        directory.extend_from_slice(&size32.to_le_bytes());
        directory.extend_from_slice(&(item.name.len() as u16).to_le_bytes());
        directory.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        directory.extend_from_slice(&[0; 6]); // comment, disk, internal attributes
        directory.extend_from_slice(&0u32.to_le_bytes()); // external attributes
        directory.extend_from_slice(&offset.to_le_bytes());
        directory.extend_from_slice(item.name.as_bytes());
        directory.extend_from_slice(&extra);
    }
    let start = out.len() as u32;
    out.extend_from_slice(&directory);
    out.extend_from_slice(&end_record(
        items.len() as u16,
        directory.len() as u32,
        start,
    ));
    out
}

fn end_record(count: u16, size: u32, offset: u32) -> Vec<u8> {
    let mut end = Vec::new();
    end.extend_from_slice(&END_SIG.to_le_bytes());
    end.extend_from_slice(&[0; 4]);
    end.extend_from_slice(&count.to_le_bytes());
    end.extend_from_slice(&count.to_le_bytes());
    end.extend_from_slice(&size.to_le_bytes());
    end.extend_from_slice(&offset.to_le_bytes());
    end.extend_from_slice(&0u16.to_le_bytes());
    end
}

fn beyond_of(result: Result<Inspected, Beyond>) -> (String, Problem) {
    match result {
        Err(beyond) => (beyond.path, beyond.problem),
        Ok(found) => panic!("expected a problem, the check passed: {found:?}"),
    }
}

#[test]
fn an_invoice_zip_and_a_text_gzip_are_within_the_limits() {
    let pdf = b"%PDF-1.4 invoice 2024-117, two mugs".repeat(40);
    let text = b"Order 1234: two mugs, one teapot.\n".repeat(200);
    let archive = zip(&[stored("invoice.pdf", &pdf), deflated("notes.txt", &text)]);
    let found = inspect("invoices.zip", &archive, &limits()).expect("a normal zip");
    assert_eq!(
        found,
        Inspected {
            archives: 1,
            files: 2,
            expanded: (pdf.len() + text.len()) as u64
        }
    );
    let found = inspect("log.gz", &gzip(&text), &limits()).expect("a normal gzip");
    assert_eq!(found.expanded, text.len() as u64, "counted while inflated");
    assert!(is_archive(&archive) && is_archive(&gzip(&text)));
    assert!(!is_archive(b"%PDF-1.4 not an archive"));
}

#[test]
fn a_zip_declaring_a_gigabyte_is_beyond_max_expanded_before_anything_is_inflated() {
    // The data is no deflate stream at all: had it been inflated
    // first, the check would have called it corrupt instead.
    let bomb = Item {
        packed: vec![0xff; 1000],
        size: 1 << 30,
        ..deflated("zeros.bin", b"")
    };
    let (path, problem) = beyond_of(inspect("zeros.zip", &zip(&[bomb]), &limits()));
    assert_eq!(path, "zeros.zip");
    assert_eq!(
        problem,
        Problem::Expanded {
            bytes: 1 << 30,
            limit: 100_000_000
        }
    );
    let reason = Beyond { path, problem }.to_string();
    assert!(
        reason.contains("zeros.zip")
            && reason.contains("scan.archive_max_expanded")
            && reason.contains("1073741824"),
        "the reason names the archive, the limit and the figure: {reason}"
    );
}

#[test]
fn zeros_compressed_a_thousandfold_are_beyond_max_ratio() {
    let archive = zip(&[deflated("disk.img", &vec![0; 4 << 20])]);
    let (_, problem) = beyond_of(inspect("disk.zip", &archive, &limits()));
    assert!(
        matches!(problem, Problem::Ratio { ratio, limit: 100 } if ratio > 500),
        "{problem:?}"
    );
    // A small file compresses as well, and is no bomb.
    let small = zip(&[deflated("blank.txt", &[b' '; 100_000])]);
    inspect("blank.zip", &small, &limits()).expect("below the ratio floor");
}

#[test]
fn too_many_entries_and_an_absurd_count_are_beyond_max_files() {
    let items: Vec<Item> = (0..1001)
        .map(|n| stored(&format!("{n}.txt"), b"x"))
        .collect();
    let (_, problem) = beyond_of(inspect("many.zip", &zip(&items), &limits()));
    assert_eq!(
        problem,
        Problem::Files {
            files: 1001,
            limit: 1000
        }
    );
    // An end record that declares 65535 entries and holds none is judged
    // by its count before any record is read.
    let mut liar = zip(&[stored("a.txt", b"a")]);
    let at = liar.len() - END_LEN;
    liar[at + 8..at + 12].copy_from_slice(&[0xff; 4]);
    let (_, problem) = beyond_of(inspect("liar.zip", &liar, &limits()));
    assert_eq!(
        problem,
        Problem::Files {
            files: 65535,
            limit: 1000
        }
    );
    let roomy = Limits {
        max_files: 100_000,
        ..limits()
    };
    let (_, problem) = beyond_of(inspect("liar.zip", &liar, &roomy));
    assert!(
        matches!(&problem, Problem::Malformed(why) if why.contains("fewer entries")),
        "{problem:?}"
    );
}

#[test]
fn archives_nested_past_max_depth_are_named_down_to_the_deepest() {
    let mut archive = zip(&[deflated("readme.txt", b"hello")]);
    for level in (1..=3).rev() {
        archive = zip(&[deflated(&format!("level{level}.zip"), &archive)]);
    }
    let (path, problem) = beyond_of(inspect("top.zip", &archive, &limits()));
    assert_eq!(path, "top.zip/level1.zip/level2.zip/level3.zip");
    assert_eq!(problem, Problem::Depth { depth: 4, limit: 3 });
    let deeper = Limits {
        max_depth: 4,
        ..limits()
    };
    let found = inspect("top.zip", &archive, &deeper).expect("within depth 4");
    assert_eq!(found.archives, 4);
}

#[test]
fn a_bomb_inside_a_nested_zip_or_gzip_is_found() {
    let bomb = zip(&[Item {
        size: 1 << 40,
        ..deflated("zeros.bin", b"")
    }]);
    for (outer, name) in [
        (zip(&[deflated("inner.zip", &bomb)]), "outer.zip/inner.zip"),
        (zip(&[stored("inner.zip", &bomb)]), "outer.zip/inner.zip"),
        (gzip(&bomb), "outer.zip/(gunzipped)"),
    ] {
        let (path, problem) = beyond_of(inspect("outer.zip", &outer, &limits()));
        assert_eq!(path, name);
        assert!(matches!(problem, Problem::Expanded { .. }), "{problem:?}");
    }
}

#[test]
fn an_entry_that_inflates_past_its_declared_size_is_caught() {
    let liar = Item {
        size: 1000,
        ..deflated("small.txt", &vec![b'a'; 200_000])
    };
    let (_, problem) = beyond_of(inspect("liar.zip", &zip(&[liar]), &limits()));
    assert!(
        matches!(&problem, Problem::Malformed(why) if why.contains("more than the 1000 bytes")),
        "{problem:?}"
    );
}

#[test]
fn entries_sharing_their_data_are_an_overlap() {
    // Two directory records pointing at one local header: the kernel of
    // a non-recursive zip bomb.
    let mut archive = zip(&[deflated("a.txt", b"aaaa"), deflated("b.txt", b"aaaa")]);
    let first = archive
        .windows(4)
        .position(|w| w == CENTRAL_SIG.to_le_bytes())
        .unwrap();
    let second = first
        + 4
        + archive[first + 4..]
            .windows(4)
            .position(|w| w == CENTRAL_SIG.to_le_bytes())
            .unwrap();
    archive[second + 42..second + 46].copy_from_slice(&0u32.to_le_bytes());
    // The local header at 0 names a.txt; the sizes agree.
    let (_, problem) = beyond_of(inspect("overlap.zip", &archive, &limits()));
    assert!(
        matches!(&problem, Problem::Malformed(why) if why.contains("overlap")),
        "{problem:?}"
    );
}

#[test]
fn zip64_sizes_are_read_and_a_missing_zip64_field_is_malformed() {
    let big = Item {
        size: 64 << 40,
        ..deflated("zeros.bin", b"")
    };
    let archive = zip(&[big]);
    let (_, problem) = beyond_of(inspect("zip64.zip", &archive, &limits()));
    assert_eq!(
        problem,
        Problem::Expanded {
            bytes: 64 << 40,
            limit: 100_000_000
        }
    );
    // Drop the extra field: 0xFFFFFFFF alone is no size.
    let mut stripped = archive.clone();
    let at = stripped
        .windows(4)
        .position(|w| w == CENTRAL_SIG.to_le_bytes())
        .unwrap();
    stripped[at + 30..at + 32].copy_from_slice(&0u16.to_le_bytes());
    let (_, problem) = beyond_of(inspect("zip64.zip", &stripped, &limits()));
    assert!(matches!(problem, Problem::Malformed(_)), "{problem:?}");
}

#[test]
fn a_gzip_whose_isize_lies_is_still_counted() {
    let tight = Limits {
        max_expanded: 1_000_000,
        max_ratio: 100_000,
        ..limits()
    };
    let mut gz = gzip(&vec![0; 2_000_000]);
    let (_, problem) = beyond_of(inspect("a.gz", &gz, &tight));
    assert!(
        matches!(
            problem,
            Problem::Expanded {
                bytes: 2_000_000,
                ..
            }
        ),
        "{problem:?}"
    );
    // ISIZE says 10 bytes: inflating finds the rest.
    let at = gz.len() - 4;
    gz[at..].copy_from_slice(&10u32.to_le_bytes());
    let (_, problem) = beyond_of(inspect("a.gz", &gz, &tight));
    assert!(
        matches!(problem, Problem::Expanded { bytes, .. } if bytes > 1_000_000),
        "{problem:?}"
    );
}

#[test]
fn a_zip_behind_other_bytes_is_read_and_other_data_is_not_a_zip() {
    let bomb = zip(&[Item {
        size: 1 << 40,
        ..deflated("zeros.bin", b"")
    }]);
    let mut sfx = b"MZ a self-extracting program".repeat(10);
    sfx.extend_from_slice(&bomb);
    let (_, problem) = beyond_of(inspect("setup.exe", &sfx, &limits()));
    assert!(matches!(problem, Problem::Expanded { .. }), "{problem:?}");
    // A PDF that happens to hold an end record's four bytes.
    let mut pdf = b"%PDF-1.4 stream".to_vec();
    pdf.extend_from_slice(&end_record(3, 100, 5));
    pdf.extend_from_slice(b" endstream");
    let found = inspect("doc.pdf", &pdf, &limits()).expect("not a zip");
    assert_eq!(found.archives, 0);
}

#[test]
fn every_cut_of_a_zip_is_malformed_and_no_byte_flip_panics() {
    let archive = zip(&[
        deflated("a.txt", b"hello hello hello"),
        stored("inner.zip", &zip(&[stored("b.txt", b"b")])),
    ]);
    inspect("whole.zip", &archive, &limits()).expect("the whole zip passes");
    for len in 0..archive.len() {
        let cut = &archive[..len];
        // A cut that ends with the stored inner zip is that zip behind
        // other bytes; no cut passes with more than the inner one holds.
        if let Ok(found) = inspect("cut.zip", cut, &limits()) {
            assert!(
                found.files <= 1,
                "a zip cut at {len} bytes passed as {found:?}"
            );
        }
    }
    for at in 0..archive.len() {
        for flip in [0x01, 0x80, 0xff] {
            let mut bent = archive.clone();
            bent[at] ^= flip;
            let _ = inspect("bent.zip", &bent, &limits());
        }
    }
}

#[test]
fn gzip_members_count_as_files() {
    let text = b"log line\n".repeat(100);
    let three = [gzip(&text), gzip(&text), gzip(b"")].concat();
    let found = inspect("logs.gz", &three, &limits()).expect("three members");
    assert_eq!(found.files, 3);
    assert_eq!(
        found.expanded,
        2 * text.len() as u64,
        "every member counted"
    );
    let many = gzip(b"").repeat(20_000);
    let (_, problem) = beyond_of(inspect("many.gz", &many, &limits()));
    assert_eq!(
        problem,
        Problem::Files {
            files: 1001,
            limit: 1000
        }
    );
}

#[test]
fn a_check_past_its_deadline_stops() {
    let archive = zip(&[deflated("a.txt", b"hello")]);
    let late = Limits {
        deadline: Some(Instant::now() - std::time::Duration::from_millis(1)),
        ..limits()
    };
    let (_, problem) = beyond_of(inspect("late.zip", &archive, &late));
    assert_eq!(problem, Problem::TooSlow);
}

#[test]
fn an_encrypted_entry_is_judged_by_what_it_declares() {
    let secret = Item {
        flags: FLAG_ENCRYPTED,
        packed: vec![0x5a; 64],
        size: 100,
        ..deflated("secret.txt", b"")
    };
    inspect("secret.zip", &zip(std::slice::from_ref(&secret)), &limits()).expect("declared only");
    let bomb = Item {
        size: 1 << 33,
        ..secret
    };
    let (_, problem) = beyond_of(inspect("secret.zip", &zip(&[bomb]), &limits()));
    assert!(matches!(problem, Problem::Expanded { .. }), "{problem:?}");
}

#[test]
fn a_stored_entry_or_local_header_that_disagrees_is_malformed() {
    let short = Item {
        size: 5,
        ..stored("a.txt", b"abc")
    };
    let (_, problem) = beyond_of(inspect("a.zip", &zip(&[short]), &limits()));
    assert!(matches!(problem, Problem::Malformed(_)), "{problem:?}");
    let mut archive = zip(&[deflated("a.txt", b"hello")]);
    // The local header's uncompressed size says 1 GiB.
    archive[22..26].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let (_, problem) = beyond_of(inspect("a.zip", &archive, &limits()));
    assert!(
        matches!(&problem, Problem::Malformed(why) if why.contains("disagree")),
        "{problem:?}"
    );
}

#[test]
fn archives_as_real_tools_make_them_pass() {
    // The fuzz seeds: zips and gzips written by Python's zipfile and
    // gzip (data descriptors, zip64 local headers, a program before
    // the zip), after their selector byte.
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/archive");
    for (seed, archives) in [
        ("zip", 1),
        ("zip64", 1),
        ("nested-zip", 2),
        ("gzip", 1),
        ("gzip-of-zip", 2),
        ("self-extractor", 1),
    ] {
        let data = std::fs::read(corpus.join(seed)).unwrap();
        let found = inspect(seed, &data[1..], &limits())
            .unwrap_or_else(|e| panic!("{seed} is a normal archive: {e}"));
        assert_eq!(found.archives, archives, "{seed}: {found:?}");
    }
}

#[test]
fn names_in_reasons_are_printable_and_bounded() {
    assert_eq!(printable(b"a\r\nb\x00c"), "a  b c");
    let long = printable(&[b'x'; 500]);
    assert_eq!(long.chars().count(), 81, "80 characters and an ellipsis");
}
