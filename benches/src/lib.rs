//! thaw's benchmarks. The criterion benchmarks live in `benches/benches/`; each file opens
//! with what it measures and how to run it. Results and the machine they ran on are in the
//! top-level README.
