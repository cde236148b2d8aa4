#!/usr/bin/env python3
"""Phase boundaries of one traced cold start (ftrace's trace on stdin), or a summary.

`phases.py line`  reads one sample's ftrace trace and prints
                  `key=ms ...` (each phase's duration in ms);
`phases.py sum`   reads those lines and prints each phase's median, p10 and p90.
"""
import re
import statistics
import sys


def read():
    ev = []
    for l in sys.stdin:
        # ftrace's format: "  comm-pid [cpu] flags  12345.678901: event: ..."
        m = re.search(r"\s(\d+\.\d+):\s+([\w:]+?)(?::\s|\()", l + " ")
        if m:
            ev.append((float(m.group(1)), m.group(2).split(":")[-1]))
    ev.sort()
    return ev


def first_in(ev, name, after=0.0):
    """The time of the first `name` event at or after `after`, or None."""
    return next((t for t, n in ev if n == name and t >= after), None)


def ms(a, b):
    """b - a in ms, or "nan" when either end is missing."""
    return f"{(b - a) * 1000:.3f}" if a is not None and b is not None else "nan"


def line():
    ev = read()

    def first(name, after=0.0):
        return first_in(ev, name, after)

    def last(name, before):
        ts = [t for t, n in ev if n == name and t <= (before or 0)]
        return ts[-1] if ts else None

    t0 = first("sched_process_exec")
    ex = first("exec")
    de = first("deser") or first("deser2")
    dr = first("deser_ret") or first("deser2_ret")
    ip = first("ipre_ret")
    li = first("sys_listen")
    ac = first("sys_accept4", li or 0)
    rv = first("sys_recvfrom", ac or 0)
    ins = [t for t, n in ev if n in ("inst", "inst2") and t >= (ac or 0)]
    inr = [t for t, n in ev if n in ("inst_ret", "inst2_ret") and t >= (ac or 0)]
    i0, i1 = (min(ins), max(inr)) if ins and inr else (None, None)
    wr = next((t for t, n in ev if n in ("sys_writev", "sys_sendto") and t >= (i1 or 1e18)), None)
    # serve's own engine is the last built before the component is read; an earlier one, if
    # any, is the probe of whether the pooling allocator works here
    # (`use_pooling_allocator_by_default`).
    en, er = last("engine", de), last("engine_ret", de)
    co = last("config", en)
    server = ms(0, (li - t0) + (wr - ac)) if None not in (t0, li, ac, wr) else "nan"
    print(" ".join([
        # exec (the kernel has loaded the binary) -> ServeCommand::execute: ld.so, Rust's
        # start, clap
        "process_start=" + ms(t0, ex),
        # execute -> the first Config::new: logging, the tokio runtime (its worker threads)
        "runtime=" + ms(ex, first("config")),
        # the first Config::new -> serve's: the pooling allocator's probe engine, if built
        "pooling_probe=" + ms(first("config"), co),
        # serve's Config::new -> Engine::new: with the compilation cache's settings
        "config=" + ms(co, en),
        "engine_new=" + ms(en, er),
        # serve's engine built -> the file's precompiled header read: the linker filled with
        # WASI (wasi_to_linker) and wasi:http, then load_module opening and mapping the file
        "linker=" + ms(er, first("detect")),
        "wasi_to_linker=" + ms(first("wasi_linker"), first("wasi_linker_ret")),
        # the precompiled header checked
        "open_file=" + ms(first("detect"), de),
        "deserialize=" + ms(de, dr),
        # from deserialize_file's return (what lies between is a match on its result)
        "instantiate_pre=" + ms(dr, ip),
        # ProxyPre (tries p3, then p2), the shutdown task, bind, listen
        "to_listen=" + ms(ip, li),
        "startup=" + ms(t0, li),
        # the request: accepted -> read -> instantiated -> first response write
        "read=" + ms(ac, rv),
        "instantiate=" + ms(i0, i1),
        "handler=" + ms(i1, wr),
        "request=" + ms(ac, wr),
        # startup + request: the peer's cold start without the client's wait for the port
        "server=" + server,
    ]))


def thaw():
    """One line per request: the trace is split at each accept."""
    ev = read()
    starts = [i for i, (_, n) in enumerate(ev) if n == "sys_accept4"]
    # tokio accepts until EAGAIN: an accept4 right after another is the same wake-up.
    starts = [i for j, i in enumerate(starts) if j == 0 or ev[i][0] - ev[starts[j - 1]][0] > 50e-6]
    for j, i in enumerate(starts):
        one_request(ev[i:starts[j + 1] if j + 1 < len(starts) else len(ev)], j == 0)


def one_request(ev, first_of_batch):
    def first(name, after=0.0):
        return first_in(ev, name, after)

    ac = ev[0][0]
    rv = first("sys_recvfrom", ac)
    # The request's instance is the first after the load; the warm pool's refills follow it.
    i0 = first("inst", first("load_ret") or 0)
    wr = next((t for t, n in ev if n in ("sys_writev", "sys_sendto") and t >= (i0 or 1e18)), None)
    sp = first("spawn", rv or 0)
    print(" ".join([
        f"first={int(first_of_batch)}",
        "read=" + ms(ac, rv),                                  # accepted -> request read
        "to_spawn=" + ms(rv, sp),                              # parsing, routing, admission
        "spawn_to_load=" + ms(sp, first("load")),              # a blocking-pool thread wakes
        "cache_load=" + ms(first("cache"), first("cache_ret")),  # stat + deserialize_file
        "deserialize=" + ms(first("deser"), first("deser_ret")),
        "link=" + ms(first("link"), first("link_ret")),        # instantiate_pre, ProxyPre
        "load=" + ms(first("load"), first("load_ret")),        # Loader::load_for, with the log line
        "after_load=" + ms(first("load_ret"), i0),             # back from the blocking pool, the store
        "instance_and_handler=" + ms(i0, wr),                  # instantiation starts -> first response write
        "request=" + ms(ac, wr),
    ]))


def summary():
    cols = {}
    for l in sys.stdin:
        for kv in l.split():
            if "=" in kv:
                k, v = kv.split("=")
                if v != "nan":
                    cols.setdefault(k, []).append(float(v))
    for k, v in cols.items():
        v.sort()
        q = lambda p: v[min(len(v) - 1, int(p * len(v)))]
        print(f"{k:14} median {statistics.median(v):8.3f} ms  p10 {q(0.1):8.3f}  p90 {q(0.9):8.3f}  n={len(v)}")


if __name__ == "__main__":
    {"line": line, "thaw": thaw, "sum": summary}[sys.argv[1]]()
