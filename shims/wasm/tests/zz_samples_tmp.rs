use skiff_shim::*;
use skiff_wasm::*;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Cap(Mutex<Vec<u8>>);
impl OutputSink for Cap {
    fn write(&self, _s: Stream, b: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(b);
    }
}

fn spec(file: &str, env: Vec<(String, String)>, out: Arc<Cap>, ports: Vec<u16>) -> ContainerSpec {
    let path = std::path::PathBuf::from(format!("/work/main/samples/out/{file}"));
    ContainerSpec {
        id: "x".into(),
        name: "n".into(),
        image: Image {
            reference: file.into(),
            layers: vec![Layer { media_type: "application/wasm".into(), digest: String::new(), path }],
            ..Image::default()
        },
        argv: vec![file.into(), "one".into()],
        env,
        working_dir: None,
        mounts: vec![],
        limits: Limits { memory_bytes: Some(64 << 20), cpu_millis: None },
        ports,
        host_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
        output: out,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn samples() {
    let dir = tempfile::tempdir().unwrap();
    let shim = WasmShim::new(WasmConfig { max_instances: 50, ..WasmConfig::new(dir.path()) }).unwrap();
    let out = Arc::new(Cap::default());
    let mut c =
        shim.start(spec("hello.wasm", vec![("EXIT_CODE".into(), "7".into())], out.clone(), vec![])).await.unwrap();
    eprintln!("hello exit {:?} out {:?}", c.wait().await, String::from_utf8_lossy(&out.0.lock().unwrap()));
    let out = Arc::new(Cap::default());
    let mut c =
        shim.start(spec("hello.wasm", vec![("ALLOC_MB".into(), "100".into())], out.clone(), vec![])).await.unwrap();
    eprintln!("alloc exit {:?} out {:?}", c.wait().await, String::from_utf8_lossy(&out.0.lock().unwrap()));
    let out = Arc::new(Cap::default());
    let mut c = shim
        .start(spec(
            "ticker.wasm",
            vec![("INTERVAL_MS".into(), "100".into()), ("TICKS".into(), "3".into())],
            out.clone(),
            vec![],
        ))
        .await
        .unwrap();
    eprintln!("ticker exit {:?} out {:?}", c.wait().await, String::from_utf8_lossy(&out.0.lock().unwrap()));
    let out = Arc::new(Cap::default());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut c = shim
        .start(spec("http-hello.wasm", vec![("GREETING".into(), "hi".into())], out.clone(), vec![port]))
        .await
        .unwrap();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET /a/b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).await.unwrap();
        eprintln!("http: {r:?}");
    }
    let t = std::time::Instant::now();
    let n = 200;
    for _ in 0..n {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).await.unwrap();
        assert!(r.starts_with("HTTP/1.1 200"));
    }
    eprintln!("per request {:?} (debug build), alloc {:?}", t.elapsed() / n, shim.allocator());
    c.stop(Duration::from_secs(1));
    eprintln!("http exit {:?} stderr {:?}", c.wait().await, String::from_utf8_lossy(&out.0.lock().unwrap()));
}
