//! A function with an expensive start: it sieves the primes below ten million (tens of
//! milliseconds) before it can answer `GET /primes?n=N` with whether N is prime and how many
//! primes there are up to N.
//!
//! The table is built in `#[init]`, so thaw builds it once at deploy and every request starts
//! from a snapshot that already holds it. The handler builds it lazily too (the same
//! `OnceLock`), so the function answers identically where no snapshot was taken, just slower;
//! the `x-initialized-here` header says whether this request had to build the table.

use std::sync::OnceLock;

use thaw_sdk::{Error, Request, handler, init};

/// Numbers covered by the table.
const LIMIT: u64 = 10_000_000;

/// A bitset of odd primes and the running count of primes at every 64th number.
struct Table {
    bits: Vec<u64>,
    counts: Vec<u32>,
}

static TABLE: OnceLock<Table> = OnceLock::new();

fn sieve() -> Table {
    let words = (LIMIT / 64 + 1) as usize;
    let mut composite = vec![0u64; words];
    let mut i = 2;
    while i * i < LIMIT {
        if composite[(i / 64) as usize] & (1 << (i % 64)) == 0 {
            let mut j = i * i;
            while j < LIMIT {
                composite[(j / 64) as usize] |= 1 << (j % 64);
                j += i;
            }
        }
        i += 1;
    }
    composite[0] |= 0b11; // 0 and 1 are not prime
    let bits: Vec<u64> = composite.iter().map(|w| !w).collect();
    let mut counts = Vec::with_capacity(words);
    let mut total = 0u32;
    for word in &bits {
        counts.push(total);
        total += word.count_ones();
    }
    Table { bits, counts }
}

impl Table {
    fn is_prime(&self, n: u64) -> bool {
        self.bits[(n / 64) as usize] & (1 << (n % 64)) != 0
    }

    /// Primes p with p <= n.
    fn count_up_to(&self, n: u64) -> u32 {
        let word = (n / 64) as usize;
        let below = self.bits[word] & (u64::MAX >> (63 - n % 64));
        self.counts[word] + below.count_ones()
    }
}

#[init]
fn build_table() {
    TABLE.get_or_init(sieve);
}

#[handler]
fn primes(req: Request) -> Result<thaw_sdk::Response, Error> {
    let n: u64 = thaw_sdk::query(&req, "n")
        .ok_or_else(|| Error::bad_request("pass ?n=<number>"))?
        .parse()
        .map_err(|_| Error::bad_request("n must be a number"))?;
    if n >= LIMIT {
        return Err(Error::bad_request(format!("n must be below {LIMIT}")));
    }
    let built_here = TABLE.get().is_none();
    let table = TABLE.get_or_init(sieve);
    let body = format!(
        "{{\"n\":{n},\"prime\":{},\"primes_up_to_n\":{}}}\n",
        table.is_prime(n),
        table.count_up_to(n)
    );
    Ok(thaw_sdk::http::Response::builder()
        .header("content-type", "application/json")
        .header("x-initialized-here", built_here.to_string())
        .body(body.into_bytes())?)
}
