//! A real S3 server for one test: `s3s-fs` on a random port with SigV4 credentials, its data in
//! a temp directory, killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imgfetch_resolver::config::{S3Options, StoreSpec};

/// Access key every test server accepts.
pub const ACCESS_KEY: &str = "imgfetch-test";
/// Secret key every test server accepts.
pub const SECRET_KEY: &str = "imgfetch-test-secret";

/// A running s3s-fs.
pub struct S3Server {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
    log: PathBuf,
}

impl S3Server {
    /// Starts a server; retries on another port if the one picked was taken meanwhile.
    pub fn start() -> S3Server {
        let bin = crate::find_binary(
            "s3s-fs",
            "S3S_FS_BIN",
            "cargo install --locked s3s-fs@0.14.1 --features binary",
        );
        let root = tempfile::tempdir().expect("temp dir");
        let log = root.path().join("s3s-fs.log");
        let data = root.path().join("data");
        std::fs::create_dir(&data).expect("data dir");
        for _ in 0..5 {
            let port = crate::free_port();
            let logfile = std::fs::File::create(&log).expect("log file");
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
                .arg(&data)
                .stdout(Stdio::null())
                .stderr(logfile)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return S3Server {
                        child,
                        port,
                        root,
                        log,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "s3s-fs did not start; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates a bucket (s3s-fs keeps one directory per bucket).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join("data").join(name)).expect("bucket dir");
    }

    /// Connection options with the right credentials.
    pub fn options(&self) -> S3Options {
        S3Options {
            from_env: false,
            endpoint: Some(self.endpoint()),
            region: Some("us-east-1".into()),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            session_token: None,
            allow_http: Some(true),
            virtual_hosted_style: Some(false),
        }
    }

    /// A store spec for `bucket` on this server.
    pub fn spec(&self, bucket: &str) -> StoreSpec {
        StoreSpec::S3 {
            bucket: bucket.into(),
            prefix: None,
            options: self.options(),
        }
    }

    /// An object_store client for `bucket`, for putting test objects through S3 itself.
    pub fn client(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        imgfetch_common::connect::install_tls_provider();
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(self.endpoint())
            .with_region("us-east-1")
            .with_access_key_id(ACCESS_KEY)
            .with_secret_access_key(SECRET_KEY)
            .with_allow_http(true)
            .build()
            .expect("S3 client")
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- s3s-fs log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}
