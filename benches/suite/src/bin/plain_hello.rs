//! The throughput baseline of `thaw bench`: `200 Hello, world!\n` from a plain hyper server,
//! the way thaw's listener serves, minus the wasm. Usage: `thaw-plain-hello 127.0.0.1:PORT`.

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: thaw-plain-hello ADDR"))?
        .parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(thaw_bench::throughput::serve_plain(addr))
}
