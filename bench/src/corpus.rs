//! The images a benchmark serves: `count` files of `size` bytes under a temp directory (or a
//! directory given, for a store someone else runs), each a well-formed JPEG as a camera writes it: the headers of a committed sample photo (its EXIF
//! with place, time and device included), then random entropy-coded data with the JPEG byte
//! stuffing, then the end marker. Content sniffing, EXIF parsing and the archive's directory
//! choice do for them what they do for a real photo, and the bytes do not compress. The bytes
//! depend on `size` and `count` alone: every run makes the same images.

use std::path::{Path, PathBuf};

/// Images of one size in one directory.
pub struct Corpus {
    root: PathBuf,
    /// The temp directory of [`Corpus::create`], removed on drop.
    _temp: Option<tempfile::TempDir>,
    /// Bytes per image.
    pub size: usize,
    /// How many images.
    pub count: usize,
}

impl Corpus {
    /// Writes `count` images of `size` bytes under a new temp directory, removed on drop.
    pub fn create(size: usize, count: usize) -> std::io::Result<Corpus> {
        let temp = tempfile::tempdir()?;
        let mut corpus = Corpus::create_in(temp.path(), size, count)?;
        corpus._temp = Some(temp);
        Ok(corpus)
    }

    /// Writes `count` images of `size` bytes under `dir` (created if missing, kept afterwards),
    /// each at its [`key`], replacing a file of that name.
    pub fn create_in(dir: &Path, size: usize, count: usize) -> std::io::Result<Corpus> {
        for (key, bytes) in images(size, count) {
            let path = dir.join(key);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, bytes)?;
        }
        Ok(Corpus {
            root: dir.to_path_buf(),
            _temp: None,
            size,
            count,
        })
    }

    /// The directory the images are in (a file store's root).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `file://` URL of the root.
    pub fn url(&self) -> String {
        format!("file://{}", self.root().display())
    }

    /// One image's bytes, as a store would hand them out (for the bare ceiling).
    pub fn read(&self, i: usize) -> std::io::Result<Vec<u8>> {
        std::fs::read(self.path(i))
    }

    fn path(&self, i: usize) -> PathBuf {
        self.root().join(key(i))
    }
}

/// The key of image `i`: two directory levels, as camera stores tend to have.
pub fn key(i: usize) -> String {
    format!("cam{:02}/{:04}.jpg", i % 16, i)
}

/// The images of a corpus, key and bytes, in key order: the same `size` and `count` give the
/// same bytes on every run, so a client can know their SHA-256 without reading a store.
pub fn images(size: usize, count: usize) -> impl Iterator<Item = (String, Vec<u8>)> {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ size as u64);
    (0..count).map(move |i| (key(i), rng.image(size)))
}

/// Which image the `n`th request of a run asks for: spread over the corpus, not sequential.
pub fn pick(n: usize, count: usize) -> usize {
    let mut x = n as u64 ^ 0x2545_F491_4F6C_DD1D;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    (x % count.max(1) as u64) as usize
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The sample's headers, random scan data, end of image.
    fn image(&mut self, size: usize) -> Vec<u8> {
        let head = jpeg_head();
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&head[..head.len().min(size.saturating_sub(2))]);
        while bytes.len() + 2 < size {
            let b = self.next() as u8;
            bytes.push(b);
            // A 0xFF in scan data is followed by 0x00, as in every JPEG.
            if b == 0xFF {
                bytes.push(0);
            }
        }
        bytes.truncate(size.saturating_sub(2));
        if bytes.last() == Some(&0xFF) {
            bytes.pop();
            bytes.push(0);
        }
        bytes.extend_from_slice(&[0xFF, 0xD9][..size.min(2)]);
        bytes
    }
}

/// A committed sample photo's bytes up to the end of its start-of-scan header: SOI, JFIF, EXIF
/// (GPS, capture time, camera), tables and frame header.
fn jpeg_head() -> &'static [u8] {
    const SAMPLE: &[u8] = include_bytes!("../../samples/harbor/quay-east.jpg");
    let mut i = 2;
    while i + 4 <= SAMPLE.len() && SAMPLE[i] == 0xFF {
        let code = SAMPLE[i + 1];
        let len = usize::from(u16::from_be_bytes([SAMPLE[i + 2], SAMPLE[i + 3]]));
        i += 2 + len;
        if code == 0xDA {
            return &SAMPLE[..i];
        }
    }
    &SAMPLE[..2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_jpegs_of_the_asked_size_with_the_sample_exif() {
        let corpus = Corpus::create(4000, 3).unwrap();
        for i in 0..3 {
            let bytes = corpus.read(i).unwrap();
            assert_eq!(bytes.len(), 4000);
            assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF]);
            assert_eq!(&bytes[3998..], &[0xFF, 0xD9]);
            let scan = &bytes[jpeg_head().len()..3998];
            assert!(
                scan.windows(2).all(|w| w[0] != 0xFF || w[1] == 0),
                "scan data is byte-stuffed"
            );
            let exif = exif::Reader::new()
                .read_from_container(&mut std::io::Cursor::new(&bytes))
                .expect("EXIF readable");
            assert!(exif
                .get_field(exif::Tag::GPSLatitude, exif::In::PRIMARY)
                .is_some());
        }
        assert_ne!(corpus.read(0).unwrap(), corpus.read(1).unwrap());
    }

    #[test]
    fn the_same_size_and_count_write_the_same_files() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first = Corpus::create_in(&a.path().join("store"), 3000, 20).unwrap();
        let second = Corpus::create_in(b.path(), 3000, 20).unwrap();
        for (i, (key, bytes)) in images(3000, 20).enumerate() {
            assert_eq!(key, super::key(i));
            assert_eq!(first.read(i).unwrap(), bytes, "{key}");
            assert_eq!(second.read(i).unwrap(), bytes, "{key}");
        }
        assert_eq!(first.root(), a.path().join("store"));
    }

    #[test]
    fn picks_cover_the_corpus() {
        let seen: std::collections::HashSet<usize> = (0..1000).map(|n| pick(n, 10)).collect();
        assert_eq!(seen.len(), 10);
    }
}
