//! The images a benchmark serves: `count` files of `size` bytes under a temp directory, with
//! bytes that do not compress and a JPEG signature, so content sniffing and EXIF parsing do
//! what they do for a real photo without metadata.

use std::path::{Path, PathBuf};

/// Images of one size in one directory.
pub struct Corpus {
    dir: tempfile::TempDir,
    /// Bytes per image.
    pub size: usize,
    /// How many images.
    pub count: usize,
}

impl Corpus {
    /// Writes `count` images of `size` bytes.
    pub fn create(size: usize, count: usize) -> std::io::Result<Corpus> {
        let dir = tempfile::tempdir()?;
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ size as u64);
        for i in 0..count {
            let path = dir.path().join(key(i));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, rng.image(size))?;
        }
        Ok(Corpus { dir, size, count })
    }

    /// The directory the images are in (a file store's root).
    pub fn root(&self) -> &Path {
        self.dir.path()
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

    /// A JPEG start-of-image and JFIF marker, then random bytes, then end-of-image.
    fn image(&mut self, size: usize) -> Vec<u8> {
        let head: &[u8] = &[
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0,
            0,
        ];
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&head[..head.len().min(size)]);
        while bytes.len() + 8 <= size.saturating_sub(2) {
            bytes.extend_from_slice(&self.next().to_le_bytes());
        }
        while bytes.len() < size.saturating_sub(2) {
            bytes.push(self.next() as u8);
        }
        while bytes.len() < size {
            bytes.push(if bytes.len() + 1 == size { 0xD9 } else { 0xFF });
        }
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_have_the_asked_size_and_a_jpeg_signature() {
        let corpus = Corpus::create(1000, 3).unwrap();
        for i in 0..3 {
            let bytes = corpus.read(i).unwrap();
            assert_eq!(bytes.len(), 1000);
            assert_eq!(&bytes[..3], &[0xFF, 0xD8, 0xFF]);
            assert_eq!(&bytes[998..], &[0xFF, 0xD9]);
        }
        assert_ne!(corpus.read(0).unwrap(), corpus.read(1).unwrap());
    }

    #[test]
    fn picks_cover_the_corpus() {
        let seen: std::collections::HashSet<usize> = (0..1000).map(|n| pick(n, 10)).collect();
        assert_eq!(seen.len(), 10);
    }
}
